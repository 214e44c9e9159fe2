"""The library's shape: stages import only stages below them, with no cycles (counting imports
inside functions), and no module grows past what a newcomer can read.

The layer table is the one in architecture.md; a new module must be added to it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "vsearch"

# Lowest first. A module may import modules of lower layers only (and itself). The stages are
# folders (catalog/, embeddings/, store/, learn/, evaluate/, serve/) whose modules are layered one
# by one; embedders/, cli/ and demo/ count as one unit each: their imports of each other are
# checked for cycles, not for layers. A stage folder's __init__.py holds only its docstring.
LAYERS: list[set[str]] = [
    {"errors"},
    {
        "evaluate.metrics",
        "query_options",
        "catalog.images",
        "product",
        "store.lock",
        "locate",
        "catalog.connection",
    },
    {
        "catalog.rows",
        "catalog.fetch",
        "embeddings.cache",
        "learn.shopper_photos",
        "embeddings.shards",
        "store.words",
        "store.candidates",
    },
    {"embedders"},
    {"embeddings.imported", "embeddings.ray_engine", "embeddings.tuned_model", "learn.tune_views"},
    {"learn.transforms", "store.sharded", "learn.tune_train", "embeddings.pipeline"},
    {"store.generations"},
    {
        "learn.adaptation",
        "learn.calibration",
        "catalog.hygiene",
        "store.incremental",
        "learn.query_scores",
    },
    {"learn.fit", "learn.verdict", "store.loaded", "hits", "store.nearest"},
    {"build", "search"},
    {
        "evaluate.quality",
        "serve.watcher",
        "serve.feedback",
        "store.gc",
        "serve.guard",
        "learn.tune",
    },
    {"evaluate.report", "serve.service", "serve.search_request"},
    {"serve.api", "serve.page_files", "serve.page_text"},
    {"serve.page_events"},
    {"serve.ui"},
    {"cli", "demo"},
]
STAGE_FOLDERS = {"catalog", "embeddings", "store", "learn", "evaluate", "serve"}
MAX_MODULES_PER_FOLDER = 10
EXEMPT = {
    "__init__",
    "__main__",
} | STAGE_FOLDERS  # lazy re-exports of public names, `python -m vsearch`,
# and the stage folders' docstring-only __init__.py
MAX_LINES = 700


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE).with_suffix("")
    parts = [p for p in rel.parts if p != "__init__"] or ["__init__"]
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(path: Path, me: str | None = None) -> set[str]:
    """Every vsearch module this file imports, anywhere in it, except under ``if
    TYPE_CHECKING:``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    me = me or _module_name(path)
    package = me.split(".")[:-1] if path.name != "__init__.py" else me.split(".")
    if me == "__init__":
        package = []
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "vsearch" or alias.name.startswith("vsearch."):
                    found.add(alias.name.removeprefix("vsearch").lstrip("."))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
                mod = ".".join([*base, *([node.module] if node.module else [])])
            elif node.module and (node.module == "vsearch" or node.module.startswith("vsearch.")):
                mod = node.module.removeprefix("vsearch").lstrip(".")
            else:
                mod = None
            if mod is not None:
                # `from vsearch.store import generations` imports store.generations; `from
                # vsearch.store.generations import X` resolves to the module by its known prefix.
                for alias in node.names:
                    found.add(".".join(p for p in (mod, alias.name) if p))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    found.discard(me)
    return {m for m in found if m and m != "__version__" and not m.endswith(".__version__")}


def _graph() -> dict[str, set[str]]:
    graph = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        graph[_module_name(path)] = _imports(path)
    # "from vsearch import __version__" resolves to the package itself; names that are
    # attributes of a module ("from .embedders import load_embedder" -> embedders) stay modules.
    known = set(graph)
    return {
        m: {_known_prefix(t, known) for t in targets} - {None, m} for m, targets in graph.items()
    }


def _known_prefix(name: str, known: set[str]) -> str | None:
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        candidate = ".".join(parts[:n])
        if candidate in known:
            return candidate
    return None


def _unit(module: str) -> str:
    """The LAYERS entry a module belongs to: itself, or the unit folder (embedders, demo) it is
    in."""
    names = set().union(*LAYERS)
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in names:
            return ".".join(parts[:n])
    raise AssertionError(
        f"vsearch/{module.replace('.', '/')}.py is in no layer; add it to LAYERS and "
        "architecture.md"
    )


def _layer(module: str) -> int:
    unit = _unit(module)
    for i, layer in enumerate(LAYERS):
        if unit in layer:
            return i
    raise AssertionError(
        f"vsearch/{module.replace('.', '/')}.py is in no layer; add it to LAYERS and "
        "architecture.md"
    )


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state:
                found = dfs(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = dfs(node)
            if found:
                return found
    return None


def test_no_import_cycles():
    cycle = _find_cycle({m: t for m, t in _graph().items() if m not in EXEMPT})
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_every_import_points_down():
    upward = []
    for module, targets in _graph().items():
        if module in EXEMPT:
            continue
        for target in targets:
            if target in EXEMPT or _unit(module) == _unit(target):
                continue  # inside one unit (embedders/, demo/): only cycles matter
            if _layer(target) >= _layer(module):
                upward.append(
                    f"{module} (layer {_layer(module)}) imports {target} (layer {_layer(target)})"
                )
    assert not upward, "imports that do not point to a lower stage:\n" + "\n".join(sorted(upward))


def test_no_library_module_is_too_long():
    long = {
        str(p.relative_to(PACKAGE)): n
        for p in PACKAGE.rglob("*.py")
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert not long, f"modules over {MAX_LINES} lines: {long}"


@pytest.mark.parametrize(
    "source, expected",
    [
        ("from . import store\n", {"store"}),
        ("def f():\n    from .build import build_index\n", {"build.build_index"}),
        ("from vsearch.store import generations as store\n", {"store.generations"}),
        (
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .search import Hit\n",
            set(),
        ),
        ("import vsearch.search\n", {"search"}),
    ],
)
def test_the_checker_sees_imports(tmp_path, source, expected):
    """The walker itself: function-level imports count, TYPE_CHECKING ones do not."""
    path = tmp_path / "probe.py"
    path.write_text(source)
    assert _imports(path, me="probe") == expected


def test_stage_folders_are_small_and_say_what_they_are():
    """Each stage folder's __init__.py is its docstring only (what the stage does; no code, no
    re-exports to hide where a name lives), and no folder holds more than a newcomer can scan."""
    for folder in sorted(STAGE_FOLDERS):
        tree = ast.parse((PACKAGE / folder / "__init__.py").read_text(encoding="utf-8"))
        assert len(tree.body) == 1 and isinstance(tree.body[0], ast.Expr), (
            f"vsearch/{folder}/__init__.py"
        )
    for folder in [
        PACKAGE,
        *(p for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"),
    ]:
        modules = [p.name for p in folder.glob("*.py") if p.name != "__init__.py"]
        assert len(modules) <= MAX_MODULES_PER_FOLDER, (
            f"{folder.name}/ holds {len(modules)} modules"
        )


def test_the_checker_finds_a_cycle():
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None


def test_architecture_md_lists_the_same_layers():
    """architecture.md's layer table and LAYERS say the same thing, so the map a newcomer reads is
    true."""
    import itertools
    import re

    text = (PACKAGE.parent / "architecture.md").read_text(encoding="utf-8")
    documented = [
        set(m.rstrip("/") for m in re.findall(r"`([\w/.]+)`", modules))
        for modules in re.findall(r"^\| \d+ \| ([^|]+) \|", text, flags=re.M)
    ]
    assert documented == LAYERS, (
        "architecture.md's layer table differs from LAYERS in tests/test_architecture.py:\n"
        + "\n".join(
            f"layer {i}: architecture.md {sorted(d)} vs LAYERS {sorted(layer)}"
            for i, (d, layer) in enumerate(
                itertools.zip_longest(documented, LAYERS, fillvalue=set())
            )
            if d != layer
        )
    )
