"""The project's own promises: documented numbers, a short README whose links resolve, one dependency list,
CI runs the README's command."""

from __future__ import annotations

import re
import tomllib

from helpers import REPO

from bagel_lite.loading.checkpoint import build
from bagel_lite.model import config


def test_the_documented_parameter_counts_are_the_computed_ones():
    page = (REPO / "docs" / "gpu.md").read_text()
    counts = build(config.full(), device="meta")[0].num_parameters()
    for key in ("total", "language_model", "generation_expert", "active_understanding_token",
                "active_generation_token", "vit_and_connector"):
        assert f"{counts[key]:,}" in page, f"docs/gpu.md lacks the {key} count {counts[key]:,}"


def test_the_readme_is_short_and_its_links_resolve():
    """The README is the front door (under 12 KB); every page it or a docs page links exists."""
    readme = REPO / "README.md"
    assert len(readme.read_bytes()) < 12 * 1024
    for page in [readme, *(REPO / "docs").glob("*.md")]:
        for target in re.findall(r"\]\(([^)#:]+)\)", page.read_text()):
            assert (page.parent / target).exists(), f"{page.name} links {target}, which does not exist"


def test_environment_yml_installs_the_package_extras_only():
    env = (REPO / "environment.yml").read_text()
    pip_lines = [line.strip()[2:] for line in env.splitlines() if line.strip().startswith("- -")]
    assert "--constraint constraints/cpu.txt" in pip_lines
    assert any(re.fullmatch(r"--editable \.\[[a-z,]+\]", line) for line in pip_lines)
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    used = re.search(r"--editable \.\[([a-z,]+)\]", env).group(1).split(",")
    assert set(used) <= set(extras)


def test_cpu_constraint_pins_torch_and_the_package_stays_loose():
    assert "torch==2.13.0" in (REPO / "constraints/cpu.txt").read_text()
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert any(d.startswith("torch>=") for d in deps)


def test_ci_runs_the_readme_test_command():
    assert "make test" in (REPO / ".ci/run").read_text()
    assert "`make test`" in (REPO / "README.md").read_text()
