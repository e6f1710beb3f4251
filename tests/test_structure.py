"""The shape of the package, kept by tests: sub-packages in layers whose imports only go down, short functions,
imports that run one way and never take another module's private names, and a user interface that reaches the
model only through the pipeline."""

from __future__ import annotations

import ast

from helpers import REPO

PACKAGE = REPO / "bagel_lite"
LONGEST = 60  # lines per function, outside notebooks
# What the user interface may not import: it talks to the model through Pipeline and Conversation only.
INFERENCE_INSIDES = {"bagel_lite.inference.engine", "bagel_lite.inference.contexts",
                     "bagel_lite.inference.text_generation", "bagel_lite.inference.denoising",
                     "bagel_lite.inference.flow", "bagel_lite.model"}
# The sub-packages from the ground up: each may import only those before it (docs/architecture.md draws this).
LAYERS = ("model", "loading", "inference", "training", "workbook", "micro", "seedx", "ui")


def modules() -> dict[str, tuple[ast.Module, bool]]:
    """Every module of the package by dotted name (``bagel_lite.ui.playground``): its syntax tree, and whether
    it is a package's ``__init__.py``."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        face = parts[-1] == "__init__"
        found[".".join(parts[:-1] if face else parts)] = (ast.parse(path.read_text(), str(path)), face)
    return found


def imports(name: str, tree: ast.Module, face: bool) -> list[tuple[str, list[str]]]:
    """(imported module, names taken from it) of every import in a module, relative ones resolved."""
    package = name.split(".") if face else name.split(".")[:-1]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            found.append((".".join(base + ([node.module] if node.module else [])), [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            found += [(a.name, []) for a in node.names]
    return found


def edges(all_modules) -> dict[str, set[str]]:
    """Module -> the modules of the package it imports (``from . import x`` counts as importing ``x``)."""
    graph = {}
    for name, (tree, face) in all_modules.items():
        graph[name] = set()
        for target, names in imports(name, tree, face):
            for candidate in [f"{target}.{n}" for n in names if f"{target}.{n}" in all_modules] or [target]:
                if candidate in all_modules and candidate != name:
                    graph[name].add(candidate)
    return graph


def test_no_function_longer_than_60_lines():
    long = [f"{name}.{node.name}: {node.end_lineno - node.lineno + 1} lines"
            for name, (tree, _) in modules().items() for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > LONGEST]
    assert not long, long


def test_no_module_imports_another_modules_private_names():
    all_modules = modules()
    taken = []
    for name, (tree, face) in all_modules.items():
        for target, names in imports(name, tree, face):
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if f"{target}.{names[0] if names else ''}" in all_modules:  # ``from . import module``
                private = [n for n in names if n.startswith("_")]
            if target.startswith("bagel_lite") and private:
                taken.append(f"{name} takes {private} from {target}")
    assert not taken, taken


def test_imports_run_one_way():
    """No two modules of the package import each other, directly or round a loop."""
    all_modules = modules()
    graph = edges(all_modules)
    faces = {name for name, (_, face) in all_modules.items() if face}  # a package's face only hands names on
    state: dict[str, int] = {}

    def visit(node, path):
        state[node] = 1
        for nxt in graph[node] - faces:
            assert state.get(nxt) != 1, " -> ".join(path + [nxt])
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node, [node])


def test_the_user_interface_goes_through_the_pipeline():
    for name, (tree, face) in modules().items():
        if name.startswith("bagel_lite.ui"):
            reached = {t for t, _ in imports(name, tree, face) if t.startswith("bagel_lite.")}
            inside = {t for t in reached if any(t == x or t.startswith(x + ".") for x in INFERENCE_INSIDES)}
            assert not inside, f"{name} imports {inside}"


def test_sub_packages_import_only_the_layers_below_them():
    """Every module lives in a sub-package (only the package's face, ``bagel_lite/__init__.py``, at the top), and
    a sub-package imports only itself and the layers before it in ``LAYERS``."""
    loose = [name for name, (_, face) in modules().items() if name.count(".") == 1 and not face]
    assert not loose, f"modules outside the sub-packages: {loose}"
    upward = []
    for name, (tree, face) in modules().items():
        if name == "bagel_lite":
            continue
        layer = LAYERS.index(name.split(".")[1])
        for target, _ in imports(name, tree, face):
            parts = target.split(".")
            if parts[0] == "bagel_lite" and len(parts) > 1 and parts[1] in LAYERS:
                if LAYERS.index(parts[1]) > layer:
                    upward.append(f"{name} imports {target}")
    assert not upward, upward


def test_every_import_inside_the_package_names_a_module_of_it():
    all_modules = modules()
    missing = [f"{name} imports {target}" for name, (tree, face) in all_modules.items()
               for target, _ in imports(name, tree, face)
               if target.startswith("bagel_lite") and target not in all_modules]
    assert not missing, missing


def test_the_architecture_page_matches_the_code():
    """docs/architecture.md's table of rooms, floors and imports is what scripts/module_map.py reads now."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("module_map", REPO / "scripts" / "module_map.py")
    module_map = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module_map)
    found = module_map.rooms()
    missing = module_map.check(found, module_map.floors(found))
    assert not missing, "run `python scripts/module_map.py` and update docs/architecture.md:\n" + "\n".join(missing)


def test_every_checkpoint_name_is_defined_literally():
    """Each module name in the official keys (``q_proj_moe_gen``, ``mlp_moe_gen``, ``llm2vae``, ...) is assigned
    by a line ``<object>.<name> = ...`` of the package, so that grep finds where it is made (no ``setattr``)."""
    import re

    from bagel_lite.loading.checkpoint import build
    from bagel_lite.model.config import tiny

    model, ae = build(tiny(), device="meta")
    source = "\n".join(p.read_text() for p in PACKAGE.rglob("*.py"))
    defined = set(re.findall(r"\b\w+\.(\w+)\s*(?::[^=\n]+)?=(?!=)", source))
    names = {part for key in [*model.state_dict(), *ae.state_dict()] for part in key.split(".")[:-1]
             if not part.isdigit()}
    assert "q_proj_moe_gen" in names
    assert not names - defined, f"made without a literal assignment: {sorted(names - defined)}"


def test_no_function_takes_more_than_five_positional_parameters():
    """Long calls are keyword-only past the fifth parameter (``self`` and ``cls`` not counted)."""
    long = []
    for name, (tree, _) in modules().items():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                positional = [a for a in node.args.posonlyargs + node.args.args if a.arg not in ("self", "cls")]
                if len(positional) > 5:
                    long.append(f"{name}.{node.name}: {len(positional)}")
    assert not long, long


def test_no_class_only_combines_others_by_inheritance():
    """A class of the package that inherits from another class of the package adds something of its own (the
    engine holds its reader, writer and drawer instead of inheriting from them)."""
    ours = {node.name for tree, _ in modules().values() for node in ast.walk(tree) if isinstance(node, ast.ClassDef)}
    empty = []
    for name, (tree, _) in modules().items():
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and any(getattr(b, "id", None) in ours for b in node.bases):
                body = [n for n in node.body if not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))]
                if not body or all(isinstance(n, ast.Pass) for n in body):
                    empty.append(f"{name}.{node.name}")
    assert not empty, empty
