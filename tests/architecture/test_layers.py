"""The import rule of docs/ARCHITECTURE.md, checked over every module's source (lazy imports too).

service -> stages -> io -> core, never upward, no cycles; the stages import only stages that come
before them in the pipeline (flagging, convert, calibration, imaging, sources); the simulator
imports nothing of the pipeline, so a bug shared by both cannot hide itself.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "dsacont"

# the layers, lowest first; a module may import its own layer's modules and any lower layer's
LAYERS = [
    ("core", ["dsacont.config", "dsacont.errors", "dsacont.telescope", "dsacont.calibrators", "dsacont.casa",
              "dsacont.db", "dsacont.jsonio", "dsacont.options", "dsacont.lazy"]),
    ("io", ["dsacont.io"]),
    ("flagging", ["dsacont.flagging"]),
    ("convert", ["dsacont.convert"]),
    ("calibration", ["dsacont.calibration"]),
    ("imaging", ["dsacont.imaging"]),
    ("sources", ["dsacont.sources"]),
    ("service", ["dsacont.service"]),
    ("entry points", ["dsacont.demo", "dsacont.cli"]),
]
SIMULATOR = "dsacont.simulator"


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _layer(name: str) -> int | None:
    for i, (_, prefixes) in enumerate(LAYERS):
        if any(name == p or name.startswith(p + ".") for p in prefixes):
            return i
    return None


def _imports(path: Path) -> set[str]:
    """Every dsacont module ``path`` imports, wherever the import statement stands."""
    tree = ast.parse(path.read_text(), str(path))
    me = _module_name(path)
    is_pkg = path.name == "__init__.py"
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("dsacont"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = me.split(".")
                base = base[: len(base) - node.level + (1 if is_pkg else 0)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if not mod.startswith("dsacont"):
                continue
            out.add(mod)
            for a in node.names:  # `from dsacont.io import uvh5` imports the module dsacont.io.uvh5
                if (PKG.parent / Path(*(mod + "." + a.name).split("."))).with_suffix(".py").exists() or \
                        (PKG.parent / Path(*(mod + "." + a.name).split(".")) / "__init__.py").exists():
                    out.add(mod + "." + a.name)
    out.discard("dsacont")  # the package itself (its __version__) is the root, importable from anywhere
    return out


MODULES = sorted(PKG.rglob("*.py"))


def test_every_module_has_a_layer():
    unplaced = [_module_name(p) for p in MODULES
                if _module_name(p) != "dsacont" and not _module_name(p).startswith(SIMULATOR)
                and _layer(_module_name(p)) is None]
    assert not unplaced, f"modules in no layer of docs/ARCHITECTURE.md: {unplaced}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: _module_name(p))
def test_imports_go_down(path):
    me = _module_name(path)
    if me == "dsacont":  # the public facade (lazy, PEP 562) may name anything
        return
    bad = []
    for mod in sorted(_imports(path)):
        if me.startswith(SIMULATOR):
            if not mod.startswith(SIMULATOR):
                bad.append(f"{mod} (the simulator must stay independent of the pipeline)")
            continue
        if mod.startswith(SIMULATOR):
            if _layer(me) < _layer("dsacont.demo"):
                bad.append(f"{mod} (only the entry points may run the simulator)")
            continue
        if _layer(mod) is None:
            bad.append(f"{mod} (in no layer)")
        elif _layer(mod) > _layer(me):
            bad.append(f"{mod} (layer {LAYERS[_layer(mod)][0]!r} is above {LAYERS[_layer(me)][0]!r})")
    assert not bad, f"{me} imports upward: " + "; ".join(bad)


def test_no_import_cycles():
    graph = {_module_name(p): {m for m in _imports(p) if not m.startswith(SIMULATOR)} for p in MODULES}
    graph = {k: {m for m in v if m in graph and m != k} for k, v in graph.items()}
    # a package imports its own submodules to re-export them; that is not a cycle of concerns
    for k, v in graph.items():
        for m in list(v):
            if m.startswith(k + "."):
                v.discard(m)
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for m in graph[n]:
            if state.get(m) == 1:
                cyc = stack[stack.index(m):] + [m]
                raise AssertionError("import cycle: " + " -> ".join(cyc))
            if m not in state:
                visit(m)
        stack.pop()
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n)
