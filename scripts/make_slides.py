"""Slides of the workbook's notebooks that present offline (reveal.js from local files, nothing from a CDN).

    python scripts/make_slides.py                 # every notebook
    python scripts/make_slides.py 06 08           # notebooks whose names start with these prefixes
    python -m http.server -d build/slides 8000    # then open http://127.0.0.1:8000/ in a browser

Each notebook is executed (so its figures are in the slides) and converted with ``nbconvert --to slides``: every
heading starts a slide, every other cell is a sub-slide below it (arrow down), as set in the cells' ``slideshow``
metadata. Keys in the browser: arrows to move, ``Esc`` for the overview, ``s`` for speaker notes, ``f`` full screen.

reveal.js 4.0.2 (the version nbconvert's template is written for), require.js and jQuery are taken from the npm
registry once with ``npm pack`` into ``build/slides/vendor/``: the **first** run needs npm and the network; after
that none is needed. Without npm, copy those three packages there by hand (the script says which files it looks
for). The slides load nothing else from outside: reveal's "white" theme (its fonts ship with reveal.js; the
default "simple" theme imports Google fonts), no MathJax (no notebook writes LaTeX), no mermaid, and widgets are
shown as a note (they need a kernel). Each slide file is checked for outside loads before it is written.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import nbformat
from build_book import OFFLINE, execute, external_urls, without_widgets  # the book's rules for offline pages
from nbconvert import SlidesExporter

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "build" / "slides"
VENDOR = OUT / "vendor"
PACKAGES = {"reveal.js@4.0.2": ("reveal.js", "dist/reveal.js"), "requirejs@2.3.7": ("requirejs", "require.js"),
            "jquery@3.7.1": ("jquery", "dist/jquery.min.js")}


def vendor() -> None:
    """Unpack the three JavaScript packages into build/slides/vendor/ (once)."""
    VENDOR.mkdir(parents=True, exist_ok=True)
    for spec, (folder, needed) in PACKAGES.items():
        if (VENDOR / folder / needed).exists():
            continue
        if not shutil.which("npm"):
            sys.exit(f"build/slides/vendor/{folder}/{needed} is missing and npm is not installed: "
                     f"run `npm pack {spec}` on a machine with npm and unpack its package/ folder there")
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run(["npm", "pack", spec, "--silent"], cwd=tmp, check=True, stdout=subprocess.DEVNULL)
            (tarball,) = Path(tmp).glob("*.tgz")
            with tarfile.open(tarball) as tar:
                tar.extractall(tmp, filter="data")
            shutil.rmtree(VENDOR / folder, ignore_errors=True)
            shutil.move(str(Path(tmp) / "package"), VENDOR / folder)


def main(prefixes: list[str]) -> None:
    vendor()
    notebooks = sorted((ROOT / "notebooks").glob("*.ipynb"))
    if prefixes:
        notebooks = [nb for nb in notebooks if any(nb.name.startswith(p) for p in prefixes)]
    exporter = SlidesExporter(reveal_url_prefix="vendor/reveal.js", reveal_scroll=True, reveal_theme="white",
                              **{**OFFLINE, "require_js_url": "vendor/requirejs/require.js"},
                              jquery_url="vendor/jquery/dist/jquery.min.js")
    links = []
    for path in notebooks:
        start = time.time()
        nb = execute(nbformat.read(path, as_version=4), path)
        html, _ = exporter.from_notebook_node(without_widgets(nb))
        html = re.sub(r'<script[^>]*src=""[^>]*>\s*</script>', "", html)  # the emptied script tags
        outside = external_urls(html)
        if outside:
            sys.exit(f"{path.name}: its slides would load {outside[:3]} from the network; a classroom may have none")
        target = OUT / f"{path.stem}.slides.html"
        target.write_text(html, encoding="utf-8")
        links.append(f'<li><a href="{target.name}">{path.stem}</a></li>')
        print(f"{path.name:<40} {time.time() - start:5.1f} s -> {target.relative_to(ROOT)}")
    (OUT / "index.html").write_text("<h1>bagel-lite slides</h1><ul>" + "".join(links) + "</ul>", encoding="utf-8")
    print(f"serve with: python -m http.server -d {OUT.relative_to(ROOT)} 8000   (then http://127.0.0.1:8000/)")


if __name__ == "__main__":
    main(sys.argv[1:])
