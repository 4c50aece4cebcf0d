"""Imports point down (docs/architecture.md): a lower layer never imports an upper one.

Every module under src/cnnlab is parsed with `ast` (never imported), and every `import` / `from … import` in it,
at module level or inside a function, is mapped to the layer of the module it names.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import cnnlab

PACKAGE_DIR = Path(cnnlab.__file__).resolve().parent
SRC_DIR = PACKAGE_DIR.parent

# Bottom to top. A module may import its own layer and the ones below it. Longest prefix wins.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("foundation", ("cnnlab.errors", "cnnlab._version")),  # import nothing from cnnlab
    ("shared helpers", ("cnnlab.config", "cnnlab.download", "cnnlab.io", "cnnlab.plotting")),
    ("data and models", ("cnnlab.data", "cnnlab.models")),
    ("engine", ("cnnlab.engine", "cnnlab.track")),  # track: the training loop's TensorBoard/MLflow callbacks
    ("tools", ("cnnlab.insight", "cnnlab.export", "cnnlab.serve", "cnnlab.tune", "cnnlab.onnx_predictor")),
    ("public API", ("cnnlab.api", "cnnlab")),  # the package root re-exports the API
    ("CLI", ("cnnlab.cli", "cnnlab.__main__")),  # and every */commands.py module: they may import anything
]

# Upward imports tolerated for now, each with the reason; an entry that no longer occurs fails the test, so the
# list only shrinks. (importer module, imported module)
ALLOWED_UPWARD: dict[tuple[str, str], str] = {
    # `from cnnlab import __version__` reads the package root (the API's layer, which only worked by import order
    # while the root imported the API eagerly): one-line change each to `from cnnlab._version import __version__`
    # (and, for the trainer, `from cnnlab import plotting as plots`)
}


def layer_index(module: str) -> int:
    if module.endswith(".commands"):
        return len(LAYERS) - 1
    best, best_len = None, -1
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best_len:
                best, best_len = i, len(p)
    if best is None:
        raise AssertionError(f"{module}: in no layer — add it to LAYERS here and to docs/architecture.md")
    return best


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC_DIR).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_module(name: str) -> bool:
    rel = Path(*name.split("."))
    return (SRC_DIR / rel).with_suffix(".py").is_file() or (SRC_DIR / rel / "__init__.py").is_file()


def cnnlab_imports(path: Path, source: str | None = None) -> list[tuple[int, str]]:
    """(line, module) for every import of a cnnlab module in the file, top level or nested; `from P import N`
    names the submodule P.N when N is one, else P."""
    module = module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    source = path.read_text(encoding="utf-8") if source is None else source
    for node in ast.walk(ast.parse(source, str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            for a in node.names:
                sub = f"{base}.{a.name}"
                found.append((node.lineno, sub if _is_module(sub) else base))
    return [(line, name) for line, name in found if name == "cnnlab" or name.startswith("cnnlab.")]


def upward_imports() -> list[tuple[str, str, str]]:
    """(where, importer, imported) for each import of a higher layer."""
    bad = []
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        importer = module_name(path)
        own = layer_index(importer)
        if own == len(LAYERS) - 1:
            continue
        for line, imported in cnnlab_imports(path):
            if layer_index(imported) > own and (where := f"{path.relative_to(SRC_DIR.parent)}:{line}") not in {b[0] for b in bad if b[2] == imported}:
                bad.append((where, importer, imported))
    return bad


def _describe(where: str, importer: str, imported: str) -> str:
    return f"{where}: {importer} ({LAYERS[layer_index(importer)][0]}) imports {imported} ({LAYERS[layer_index(imported)][0]})"


def test_every_module_has_a_layer():
    for path in PACKAGE_DIR.rglob("*.py"):
        layer_index(module_name(path))


def test_imports_point_down():
    found = upward_imports()
    new = [_describe(*b) for b in found if (b[1], b[2]) not in ALLOWED_UPWARD]
    assert not new, "imports that point up (move the shared code down, or import it where it lives):\n" + "\n".join(new)
    stale = sorted(set(ALLOWED_UPWARD) - {(b[1], b[2]) for b in found})
    assert not stale, f"no longer imported — remove from ALLOWED_UPWARD: {stale}"


@pytest.mark.parametrize("source, expected", [
    ("from cnnlab.api import load\n", [(1, "cnnlab.api")]),
    ("def f():\n    from cnnlab import api, __version__\n", [(2, "cnnlab.api"), (2, "cnnlab")]),
    ("from cnnlab.insight import plots\nimport numpy\n", [(1, "cnnlab.insight.plots")]),
    ("from . import compare\nfrom ..engine.io import atomic_path\n", [(1, "cnnlab.insight.compare"), (2, "cnnlab.engine.io")]),
])
def test_import_scanner_finds_nested_and_relative_imports(source, expected):
    """The scanner itself: an import hidden in a function or written relatively is still seen and resolved."""
    assert cnnlab_imports(PACKAGE_DIR / "insight" / "probe.py", source) == expected


def test_an_upward_import_is_reported_with_file_and_line():
    assert layer_index("cnnlab.engine.trainer") < layer_index("cnnlab.insight.plots") < layer_index("cnnlab.api")
    assert layer_index("cnnlab.data.commands") == layer_index("cnnlab.cli") == len(LAYERS) - 1
    text = _describe("src/cnnlab/engine/x.py:3", "cnnlab.engine.x", "cnnlab.api")
    assert text == "src/cnnlab/engine/x.py:3: cnnlab.engine.x (engine) imports cnnlab.api (public API)"
