"""Root pytest configuration: report how long the notebooks took, and keep the notebooks nbval executes so that
the book test (tests/test_book.py, moved to the end of the run) builds its pages from them instead of executing
every notebook a second time."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

_notebook_seconds: dict[str, float] = {}
_executed: dict[Path, object] = {}  # notebook path -> the notebook with the outputs nbval's run gave each cell
_cells_left: dict[Path, int] = {}  # notebook path -> its code cells not yet run


def pytest_collection_modifyitems(session, config, items):
    """The book test runs last, after nbval has executed the notebooks it reads."""
    book = [item for item in items if item.nodeid.startswith("tests/test_book.py")]
    items[:] = [item for item in items if item not in book] + book
    for item in items:
        if hasattr(item, "cell") and hasattr(item, "test_outputs"):  # an nbval cell
            path = Path(str(item.fspath)).resolve()
            _cells_left[path] = _cells_left.get(path, 0) + 1


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    yield
    if call.when == "call" and hasattr(item, "cell") and getattr(item, "test_outputs", None) is not None:
        item.cell.outputs = item.test_outputs  # the cell of the notebook nbval read, now with its run's outputs
        path = Path(str(item.fspath)).resolve()
        _cells_left[path] -= 1
        if _cells_left[path] == 0:
            _executed[path] = item.parent.nb


@pytest.fixture(scope="session")
def executed_notebooks() -> dict[Path, object]:
    """The notebooks whose every code cell nbval ran in this session, with their outputs."""
    return _executed


_threads: list[str] = []  # how many CPU threads this run uses, and why (for the report header)


def pytest_configure(config):
    os.environ.pop("MPLBACKEND", None)  # with Agg in the environment, inline figures would vanish from notebooks
    if "OMP_NUM_THREADS" not in os.environ:
        # Threads per process: the cores other jobs leave free. With two threads on two cores beside a busy job,
        # OpenMP's spin-waits made a notebook run 20 times slower. Notebook kernels and subprocesses inherit it.
        from bagel_lite.training.precision import choose_threads

        n, why = choose_threads()
        os.environ["OMP_NUM_THREADS"] = str(n)
        torch.set_num_threads(n)  # this process imported torch already (the environment alone comes too late)
        _threads.append(f"CPU threads per process: {n} ({why}; set OMP_NUM_THREADS to choose)")
    else:
        _threads.append(f"CPU threads per process: {os.environ['OMP_NUM_THREADS']} (OMP_NUM_THREADS)")


def pytest_report_header(config):
    return _threads


def pytest_runtest_logreport(report):
    path = report.nodeid.split("::")[0]
    if path.endswith(".ipynb"):
        _notebook_seconds[path] = _notebook_seconds.get(path, 0.0) + report.duration


def pytest_terminal_summary(terminalreporter):
    if _notebook_seconds:
        terminalreporter.section("notebook time")
        for path, seconds in sorted(_notebook_seconds.items()):
            terminalreporter.write_line(f"{path:<50} {seconds:6.1f} s")
        terminalreporter.write_line(f"{'total':<50} {sum(_notebook_seconds.values()):6.1f} s")
