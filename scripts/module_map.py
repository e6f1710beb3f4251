"""The package's modules and their imports, read from the code: the drawing and the table of docs/architecture.md.

    python scripts/module_map.py                  # writes docs/modules.png, prints the floors as a Markdown table
    python scripts/module_map.py --check          # exits 1 if docs/architecture.md misses a room or an edge

A *room* is a module of ``bagel_lite`` (a sub-package — ``micro/``, ``seedx/``, ``ui/`` — is one room). A room
stands one floor above the highest room it imports, so every arrow points down: the imports run one way.
Nothing is run; the imports are read with ``ast``.
"""

from __future__ import annotations

import ast
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "bagel_lite"
DOC = ROOT / "docs" / "architecture.md"


def room_of(path: Path) -> str:
    """``bagel_lite/inference/flow.py`` -> ``flow``; anything under ``bagel_lite/ui/`` -> ``ui/``."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return parts[0] + "/" if len(parts) > 1 else parts[0]


def imported_rooms(path: Path) -> set[str]:
    """The rooms a file imports (relative imports resolved; ``from . import x`` counts as importing ``x``)."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    here = list(parts[:-1])  # the package the file sits in, below bagel_lite
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.ImportFrom) or not node.level:
            continue
        base = here[:len(here) - node.level + 1] + (node.module.split(".") if node.module else [])
        targets = [base] if base else [[a.name] for a in node.names]
        for target in targets:
            if target and ((PACKAGE / target[0]).is_dir() or (PACKAGE / f"{target[0]}.py").is_file()):
                found.add(target[0] + "/" if (PACKAGE / target[0]).is_dir() else target[0])
    return found


def rooms() -> dict[str, dict]:
    """Room -> {"imports": set of rooms, "lines": int, "about": first line of its docstring}."""
    found: dict[str, dict] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == PACKAGE / "__init__.py":
            continue  # the package's face: it only hands names on
        room = found.setdefault(room_of(path), {"imports": set(), "lines": 0, "about": ""})
        room["imports"] |= imported_rooms(path) - {room_of(path)}
        room["lines"] += len(path.read_text().splitlines())
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        if path.name in ("__init__.py", f"{path.stem}.py") and not room["about"] or path.name == "__init__.py":
            room["about"] = doc.split("\n\n")[0].replace("\n", " ").split(": ")[0].split(". ")[0].rstrip(".")
    return found


def floors(found: dict[str, dict]) -> dict[str, int]:
    """Floor 1: imports no room; else one above the highest room imported. Fails on a loop of imports."""
    floor: dict[str, int] = {}

    def of(room: str, path: tuple[str, ...]) -> int:
        if room in path:
            raise ValueError("imports go round a loop: " + " -> ".join(path + (room,)))
        if room not in floor:
            floor[room] = 1 + max((of(r, path + (room,)) for r in found[room]["imports"]), default=0)
        return floor[room]

    for room in found:
        of(room, ())
    return floor


def table(found: dict[str, dict], floor: dict[str, int]) -> str:
    rows = ["| floor | room | imports | what it holds |", "|---:|---|---|---|"]
    for room in sorted(found, key=lambda r: (-floor[r], r)):
        name = room if room.endswith("/") else f"{room}.py"
        imports = ", ".join(sorted(found[room]["imports"]))
        rows.append(f"| {floor[room]} | `{name}` | {imports} | {found[room]['about']} |")
    return "\n".join(rows)


def reachable(found: dict[str, dict], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in found[todo.pop()]["imports"] - seen:
            seen.add(nxt)
            todo.append(nxt)
    return seen


def essential(found: dict[str, dict], room: str) -> set[str]:
    """The imports of ``room`` that no longer way through its other imports already implies (drawn)."""
    direct = found[room]["imports"]
    return {b for b in direct if not any(b in reachable(found, c) for c in direct - {b})}


def draw(found: dict[str, dict], floor: dict[str, int], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_floor: dict[int, list[str]] = {}
    for room in sorted(found):
        by_floor.setdefault(floor[room], []).append(room)
    width = max(len(v) for v in by_floor.values())
    fig, ax = plt.subplots(figsize=(max(6.5, 1.9 * width), 1.1 * len(by_floor) + 0.8))
    where = {}
    for f, names in by_floor.items():
        for i, room in enumerate(names):
            where[room] = ((i + 0.5) * width / len(names), f)
    for room, (x, y) in where.items():
        for target in essential(found, room):
            tx, ty = where[target]
            ax.annotate("", (tx, ty + 0.3), (x, y - 0.3), arrowprops=dict(arrowstyle="->", color="#8899aa",
                                                                            lw=0.6, shrinkA=0, shrinkB=0))
    for room, (x, y) in where.items():
        about = "\n".join(textwrap.wrap(found[room]["about"], 46))
        ax.text(x, y, f"{room}  ({found[room]['lines']} lines)\n{about}", ha="center", va="center", fontsize=8,
                bbox=dict(boxstyle="round", fc="#dde8f3" if not room.endswith("/") else "#f3e6d0", ec="#445566"))
    ax.set_xlim(0, width)
    ax.set_ylim(0.4, max(by_floor) + 0.6)
    ax.set_yticks(sorted(by_floor), [f"floor {f}" for f in sorted(by_floor)], fontsize=8)
    ax.set_xticks([])
    for side in ("top", "right", "bottom"):
        ax.spines[side].set_visible(False)
    ax.set_title("bagel_lite's rooms: each imports only rooms below it\n(an arrow that a longer way implies is "
                 "not drawn)", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def check(found: dict[str, dict], floor: dict[str, int]) -> list[str]:
    """What docs/architecture.md misses of the code's rooms and floors (its table is ``table``'s output)."""
    text = DOC.read_text()
    return [line for line in table(found, floor).splitlines()[2:] if line not in text]


if __name__ == "__main__":
    found = rooms()
    floor = floors(found)
    if "--check" in sys.argv:
        missing = check(found, floor)
        print("\n".join(missing) or "docs/architecture.md matches the code")
        sys.exit(1 if missing else 0)
    draw(found, floor, ROOT / "docs" / "modules.png")
    print(table(found, floor))
