"""Build the workbook as a static book: every notebook executed, exported to one self-contained HTML page.

    python scripts/build_book.py                    # -> build/book/index.html (about as long as the notebooks' tests)
    python scripts/build_book.py --no-execute       # export the notebooks with the outputs they are stored with

Tool: nbconvert's HTML exporter (the Jupyter project's own), run on notebooks executed by nbclient. Figures are
embedded in the pages as data URIs, so the folder can be opened from disk or served as it is, with no network:
a reader without Python sees every figure and printed result. Widgets appear as the figures their notebooks
draw from them after a headless run (their live controls need a kernel).
"""

from __future__ import annotations

import argparse
import base64
import copy
import html
import os
import re
import time
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
NAV_STYLE = ("<style>.book-nav{font:15px sans-serif;padding:10px 16px;background:#f4f4f4;border-bottom:1px solid #ddd}"
             ".book-nav a{margin-right:18px}</style>")


def notebooks(root: Path = ROOT) -> list[Path]:
    """The workbook's notebooks in order, then their solutions."""
    folder = root / "notebooks"
    return sorted(folder.glob("*.ipynb")) + sorted((folder / "solutions").glob("*.ipynb"))


def execute(nb, path: Path, timeout: int = 600):
    from nbclient import NotebookClient

    os.environ.pop("MPLBACKEND", None)  # with Agg in the environment, inline figures would vanish
    NotebookClient(nb, timeout=timeout, kernel_name="python3", store_widget_state=True,
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    return nb


def title_of(nb, fallback: str) -> str:
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("# "):
                    return line[2:].strip()
    return fallback


def page_name(path: Path, root: Path = ROOT) -> str:
    """notebooks/05_x.ipynb -> 05_x.html; notebooks/solutions/05_x_solutions.ipynb -> solutions/05_x_solutions.html"""
    return path.relative_to(root / "notebooks").with_suffix(".html").as_posix()


# What a page would otherwise fetch from the network: MathJax (no notebook writes LaTeX: formulas are code), mermaid
# (no notebook draws one), require.js and the widget renderer from unpkg (a static page has no kernel for widgets).
OFFLINE = dict(mathjax_url="", mermaid_js_url="", mermaid_layout_elk_js_url="", require_js_url="",
               widget_renderer_url="", jupyter_widgets_base_url="")
WIDGET_NOTE = ('<p class="book-widget-note"><i>(An interactive widget: it runs in JupyterLab, with a kernel — '
               "open the notebook there.)</i></p>")


def without_widgets(nb):
    """A copy of ``nb`` whose widget outputs say where they run instead (a static page has no kernel; dropping the
    widget state also drops the renderer a page would fetch from unpkg)."""
    nb = copy.deepcopy(nb)
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if "application/vnd.jupyter.widget-view+json" in data:
                data.pop("application/vnd.jupyter.widget-view+json")
                data["text/html"] = WIDGET_NOTE
    return nb


def to_html(nb, nav: str) -> str:
    """One self-contained page (inline CSS, figures as data URIs), links to other notebooks made .html links. It
    loads nothing from the network (a classroom may have none): see ``OFFLINE`` and ``external_urls``."""
    from nbconvert import HTMLExporter

    body, _ = HTMLExporter(template_name="lab", **OFFLINE).from_notebook_node(without_widgets(nb))
    body = re.sub(r'<script[^>]*src=""[^>]*>\s*</script>', "", body)  # the emptied script tags
    body = re.sub(r'href="([^"]+?)\.ipynb"', r'href="\1.html"', body)
    return re.sub(r"(<body[^>]*>)", lambda m: m.group(1) + NAV_STYLE + nav, body, count=1)


def external_urls(html: str) -> list[str]:
    """Everything a page would load from another machine: script / link / img / iframe sources and CSS or JS
    imports that start with http(s) or //. (Hyperlinks a reader clicks are not loads.)"""
    loads = re.findall(r'<(?:script|img|iframe|source|embed)[^>]*\ssrc="((?:https?:)?//[^"]+)"', html)
    loads += re.findall(r'<link[^>]*\shref="((?:https?:)?//[^"]+)"', html)
    loads += re.findall(r'@import\s+(?:url\()?["\']?((?:https?:)?//[^"\')]+)', html)
    loads += re.findall(r'import\(\s*["\']((?:https?:)?//[^"\']+)', html)
    return loads


def nav_bar(pages: list[str], k: int, prefix: str) -> str:
    links = [f'<a href="{prefix}index.html">contents</a>']
    if k > 0:
        links.append(f'<a href="{prefix}{pages[k - 1]}">&larr; {html.escape(Path(pages[k - 1]).stem)}</a>')
    if k + 1 < len(pages):
        links.append(f'<a href="{prefix}{pages[k + 1]}">{html.escape(Path(pages[k + 1]).stem)} &rarr;</a>')
    return f'<div class="book-nav">{"".join(links)}</div>'


def index_page(entries: list[tuple[str, str, int]], architecture: Path | None) -> str:
    rows = "".join(f'<li><a href="{page}">{html.escape(title)}</a> <small>({n} figures)</small></li>'
                   for page, title, n in entries)
    picture = ""
    if architecture is not None and architecture.is_file():
        data = base64.b64encode(architecture.read_bytes()).decode()
        picture = f'<h2>How BAGEL fits together</h2><img style="max-width:100%" src="data:image/png;base64,{data}">'
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>bagel-lite workbook</title></head>"
            f"<body style='font:16px sans-serif;max-width:1100px;margin:24px auto'>"
            f"<h1>bagel-lite: the workbook</h1><p>Every notebook, executed, with its figures.</p>{picture}"
            f"<h2>Notebooks</h2><ul>{rows}</ul></body></html>")


def build(out: Path = ROOT / "build" / "book", paths: list[Path] | None = None, run: bool = True,
          log=print, executed: dict | None = None) -> dict[str, int]:
    """Write one page per notebook and an index into ``out``; return {page: number of embedded figures}.
    ``executed`` maps a notebook's path to the notebook already executed (the test run's), used as it is."""
    paths = paths or notebooks()
    pages = [page_name(p) for p in paths]
    figures, entries = {}, []
    for k, (path, page) in enumerate(zip(paths, pages)):
        start = time.time()
        if executed and path in executed:
            nb = executed[path]
        else:
            nb = nbformat.read(path, as_version=4)
            if run:
                execute(nb, path)
        prefix = "../" * page.count("/")
        text = to_html(nb, nav_bar(pages, k, prefix))
        target = out / page
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
        figures[page] = len(re.findall(r'<img[^>]+src="data:image/(?:png|jpeg|svg\+xml)', text))
        entries.append((page, title_of(nb, path.stem), figures[page]))
        log(f"{page:<45} {figures[page]:3d} figures  {time.time() - start:5.1f} s")
    (out / "index.html").write_text(index_page(entries, ROOT / "figures" / "architecture.png"), encoding="utf-8")
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "book")
    parser.add_argument("--no-execute", action="store_true", help="export the stored outputs, do not run")
    args = parser.parse_args()
    start = time.time()
    build(args.out, run=not args.no_execute)
    print(f"book in {args.out / 'index.html'} ({time.time() - start:.0f} s)")


if __name__ == "__main__":
    main()
