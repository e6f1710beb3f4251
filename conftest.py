"""Root pytest configuration: report how long the notebooks took (the workbook's time budget is 5 minutes)."""

from __future__ import annotations

import os

_notebook_seconds: dict[str, float] = {}


def pytest_configure(config):
    os.environ.pop("MPLBACKEND", None)  # with Agg in the environment, inline figures would vanish from notebooks


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
