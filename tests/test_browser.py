"""The playground in a real browser: JupyterLab on loopback, Debian's chromium driven by Playwright.

It runs the playground notebook, types a prompt, clicks Generate, waits for the picture, checks that another
seed gives another picture, and saves a screenshot to artifacts/playground.png. `.ci/run` installs chromium
when it is missing.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from helpers import REPO

ARTIFACTS = REPO / "artifacts"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab():
    port, token = free_port(), secrets.token_hex(16)
    cmd = [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
           f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={REPO}", "--LabApp.expose_app_in_browser=True",
           "--LabApp.extension_manager=readonly", "--LabApp.news_url=None"]
    if os.geteuid() == 0:
        cmd.append("--allow-root")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.pop("MPLBACKEND", None)
    ARTIFACTS.mkdir(exist_ok=True)
    log = open(ARTIFACTS / "jupyterlab.log", "w")
    server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        else:
            raise RuntimeError(f"JupyterLab did not start; see {ARTIFACTS / 'jupyterlab.log'}")
        yield url, token
    finally:
        server.terminate()
        server.wait(timeout=20)
        log.close()


def test_playground_generates_in_a_real_browser(lab):
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    assert os.path.exists(chromium), "Debian's chromium is missing: apt-get install chromium (.ci/run does this)"
    url, token = lab
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1300, "height": 1100})
        page.goto(f"{url}/lab/tree/notebooks/09_playground.ipynb?token={token}")
        page.wait_for_selector(".jp-Notebook", timeout=60_000)
        page.wait_for_function("() => window.jupyterapp && window.jupyterapp.shell.currentWidget"
                               " && window.jupyterapp.shell.currentWidget.sessionContext"
                               " && window.jupyterapp.shell.currentWidget.sessionContext.session", timeout=60_000)
        page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")
        page.wait_for_selector(".bagel-generate", timeout=120_000)
        result = page.locator("img.bagel-result")

        def picture_changes(before: str | None):
            page.wait_for_function(
                "(s) => { const i = document.querySelector('img.bagel-result');"
                " return i && i.src && i.src !== s && i.complete && i.naturalWidth > 0; }",
                arg=before, timeout=120_000)
            return result.evaluate("i => { const c = document.createElement('canvas'); c.width = i.naturalWidth;"
                                   " c.height = i.naturalHeight; c.getContext('2d').drawImage(i, 0, 0);"
                                   " return c.toDataURL(); }")

        def type_then_generate(selector: str, text: str, key: str):
            field = page.locator(selector)
            field.fill(text)
            field.press(key)
            before = result.get_attribute("src")
            page.locator("button.bagel-generate").click()
            return picture_changes(before)

        picture_changes(None)  # the notebook's own first run shows a picture
        page.locator(".bagel-seed input").fill("0")  # the notebook's last exercise leaves seed 1
        page.locator(".bagel-seed input").press("Tab")
        first = type_then_generate(".bagel-prompt textarea", "a large blue square at the top", "Tab")
        assert "seed 0" in page.locator(".bagel-info").inner_text()
        second = type_then_generate(".bagel-seed input", "5", "Enter")
        assert second != first, "another seed should draw another picture"
        page.wait_for_function("() => !document.querySelector('button.bagel-generate').disabled", timeout=60_000)
        assert "seed=5" in page.locator(".bagel-info").inner_text()
        news = page.locator(".jp-Notification-Toast-Close, .jp-toast-dismiss")  # JupyterLab's "news?" toast
        if news.count():
            news.first.click()
        page.screenshot(path=str(ARTIFACTS / "playground.png"), full_page=True)
        browser.close()
