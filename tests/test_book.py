"""The static book (`make book`): every notebook executed and exported to a page that holds its figures.

It checks the result as a reader sees it: one page per notebook and per solution, figures embedded in each
notebook's page, an index linking them all. In a whole test run it comes last and builds the pages from the
notebooks nbval has just executed (conftest.py keeps them); run alone, it executes them itself.
"""

from __future__ import annotations

import sys

from helpers import REPO

sys.path.insert(0, str(REPO / "scripts"))
import build_book  # noqa: E402


def test_book_has_every_notebook_with_its_figures(tmp_path, executed_notebooks):
    out = tmp_path / "book"
    paths = build_book.notebooks()
    figures = build_book.build(out, paths, log=lambda *_: None,
                               executed={p: executed_notebooks[p.resolve()] for p in paths
                                         if p.resolve() in executed_notebooks})
    assert len(paths) >= 12 and len(figures) == len(paths)
    for path in paths:
        page = build_book.page_name(path)
        text = (out / page).read_text(encoding="utf-8")
        assert "book-nav" in text and ".ipynb\"" not in text, page  # navigation; links point at pages
        assert build_book.external_urls(text) == [], page  # opens with the network cut: nothing loaded from outside
        if "/" not in page:  # a notebook (solutions may have no figure)
            assert figures[page] > 0, f"{page} shows no figure"
    index = (out / "index.html").read_text(encoding="utf-8")
    assert all(f'href="{page}"' in index for page in figures)
    assert "data:image/png;base64," in index  # the architecture map
    assert build_book.external_urls(index) == []


def test_the_offline_check_finds_outside_loads():
    page = ('<script src="https://cdn.example/x.js"></script><link rel="stylesheet" href="//fonts.example/a.css">'
            '<style>@import url("https://fonts.googleapis.com/css?family=Lato");</style>'
            '<a href="https://bagel-ai.org/">a link is not a load</a><script src="vendor/local.js"></script>')
    assert build_book.external_urls(page) == ["https://cdn.example/x.js", "//fonts.example/a.css",
                                              "https://fonts.googleapis.com/css?family=Lato"]
