"""The import layering of the whole package (/work/shared/design.md, issue 16):

    foundation <- core <- backends <- pipeline <- {distributed, tuning} <- api <- cli

checked statically over every import statement of every module (at module level or inside a
function: a lazy import is still a dependency), plus where the heavy third-party packages may be
imported, plus what importing each layer loads at run time (``sys.modules``).

A module may import its own layer and the layers below it; ``distributed`` and ``tuning`` are
siblings that never import each other. A new top-level module must be given a layer here.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import rayq

PACKAGE = Path(rayq.__file__).resolve().parent

#: errors, logging, progress events and output storage: used by every layer, import none of them.
FOUNDATION = {"errors", "logs", "events", "storage"}
#: The API layer: the rayq/api/ package and the NNCF-compatibility shim (rayq.compat).
API_MODULES = {"api", "compat"}
RANK = {
    "foundation": 0,
    "core": 1,
    "backends": 2,
    "pipeline": 3,
    "distributed": 4,
    "tuning": 4,
    "api": 5,
    "cli": 6,
    "testing": 7,
}

#: (importing file, imported rayq module) edges allowed against the order, each with its reason.
LAYER_EXCEPTIONS: dict[tuple[str, str], str] = {}
#: Edges that another stream of work removes; the lead drops these entries after merging it.
TEMPORARY: dict[tuple[str, str], str] = {}

#: Third-party packages and the one layer that may import them.
HOME = {
    "onnx": "rayq/backends/",
    "onnxruntime": "rayq/backends/",
    "openvino": "rayq/backends/",
    "ray": "rayq/distributed/",
    "optuna": "rayq/tuning/",
}
#: (importing file or folder, package) imports of those packages outside their home, each with its reason.
HOME_EXCEPTIONS: dict[tuple[str, str], str] = {
    ("rayq/testing/", "onnx"): "test-support package: builds reference ONNX models",
    ("rayq/testing/", "onnxruntime"): "test-support package: runs reference models on both runtimes",
    ("rayq/testing/", "openvino"): "test-support package: runs reference models on both runtimes",
    ("rayq/pipeline/latency.py", "onnxruntime"): "runtime_settings() records the runtime's version; "
    "to move behind the backend protocol (issue 16: describe())",
    ("rayq/pipeline/latency.py", "openvino"): "runtime_settings() records the runtime's version; "
    "to move behind the backend protocol (issue 16: describe())",
}
HOME_TEMPORARY: dict[tuple[str, str], str] = {}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str) -> bool:
    rel = Path(*name.split("."))
    return (PACKAGE.parent / rel).is_dir() or (PACKAGE.parent / rel).with_suffix(".py").is_file()


def imports(path: Path) -> set[str]:
    """Every module imported by a file, at any depth; ``from a import b`` counts as ``a.b`` when
    ``b`` is a submodule (else as ``a``); relative imports are resolved; ``importlib.import_module("x")``
    with a literal name counts."""
    module = _module_name(path)
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
            submodules = {f"{base}.{a.name}" for a in node.names if _is_module(f"{base}.{a.name}")}
            found.update(submodules if len(submodules) == len(node.names) else {base, *submodules})
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", None)) in ("import_module", "__import__")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.add(node.args[0].value)
    return found


def layer(module: str) -> str:
    """The layer of a ``rayq`` module; fails for a module no layer claims."""
    parts = module.split(".")
    if len(parts) == 1:
        return "api"  # the package: re-exports of the public API
    top = parts[1]
    if top == "__main__":
        return "cli"
    if top in RANK:
        return top
    if top in API_MODULES:
        return "api"
    if top in FOUNDATION:
        return "foundation"
    raise AssertionError(f"module {module} is in no layer: add it to tests/test_layering.py")


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    """rel. path -> imported modules, for every file of the package."""
    return {p.relative_to(PACKAGE.parent).as_posix(): imports(p) for p in sorted(PACKAGE.rglob("*.py"))}


def test_the_graph_sees_known_edges(graph):
    """The parser resolves relative, ``from x import submodule`` and lazy imports (else the rules check nothing)."""
    assert "rayq.core.plan" in graph["rayq/pipeline/build.py"]
    assert "rayq.cli.main" in graph["rayq/__main__.py"]
    assert any(m == "ray" for m in graph["rayq/distributed/cluster.py"])
    assert len(graph) > 90


def test_every_module_has_a_layer(graph):
    for path in graph:
        layer(_module_name(PACKAGE.parent / path))


def test_layers_import_only_their_own_layer_and_those_below(graph):
    offenders = []
    for path, modules in graph.items():
        src = layer(_module_name(PACKAGE.parent / path))
        for target in sorted(m for m in modules if m == "rayq" or m.startswith("rayq.")):
            dst = layer(target)
            upward = RANK[dst] > RANK[src] or (RANK[dst] == RANK[src] and dst != src)
            if upward and (path, target) not in LAYER_EXCEPTIONS and (path, target) not in TEMPORARY:
                offenders.append(f"{path} ({src}) imports {target} ({dst})")
    assert not offenders, "\n".join(offenders)


def test_distributed_knows_no_model_format(graph):
    """Ray work ships pipeline calls: rayq/distributed reaches backends only through the
    backend protocol and registry (``rayq.backends``, ``.base``, ``.registry``), never
    into one format's package (``rayq.backends.onnx``, ``rayq.backends.openvino``)."""
    generic = {"rayq.backends", "rayq.backends.base", "rayq.backends.registry"}
    offenders = sorted(
        (path, m)
        for path, modules in graph.items()
        if path.startswith("rayq/distributed/")
        for m in modules
        if m.startswith("rayq.backends") and m not in generic and (path, m) not in TEMPORARY
    )
    assert not offenders


def test_sibling_layers_never_import_each_other(graph):
    for a, b in (("distributed", "tuning"), ("tuning", "distributed")):
        offenders = sorted(
            path
            for path, modules in graph.items()
            if path.startswith(f"rayq/{a}/") and any(m.startswith(f"rayq.{b}") for m in modules)
        )
        assert not offenders, f"rayq.{a} imports rayq.{b}: {offenders}"


def _home_exception(path: str, package: str) -> bool:
    return any(path.startswith(where) and package == pkg for where, pkg in [*HOME_EXCEPTIONS, *HOME_TEMPORARY])


@pytest.mark.parametrize("package", sorted(HOME))
def test_third_party_runtimes_stay_in_their_layer(graph, package):
    importers = sorted(path for path, modules in graph.items() if any(m.split(".")[0] == package for m in modules))
    assert any(p.startswith(HOME[package]) for p in importers), f"nothing imports {package}: update this test"
    offenders = [p for p in importers if not p.startswith(HOME[package]) and not _home_exception(p, package)]
    assert not offenders, f"{package} imported outside {HOME[package]}: {offenders}"


def test_listed_exceptions_are_still_needed(graph):
    """A permanent exception that no longer matches any import is stale: remove it."""
    for (path, target), why in LAYER_EXCEPTIONS.items():
        assert target in graph.get(path, set()), f"stale exception ({why}): {path} -> {target}"
    for (where, package), why in HOME_EXCEPTIONS.items():
        assert any(
            p.startswith(where) and any(m.split(".")[0] == package for m in mods) for p, mods in graph.items()
        ), f"stale exception ({why}): {where} -> {package}"


#: What importing each layer must not load (fresh interpreters, so nothing else imported it first).
MUST_NOT_LOAD = {
    "rayq.core": ("ray", "optuna", "onnx", "onnxruntime", "openvino"),
    "rayq.backends": ("ray", "optuna"),
    "rayq.pipeline": ("ray", "optuna"),
    "rayq.tuning": ("ray",),
    "rayq.distributed": ("optuna",),
    "rayq": ("ray", "optuna", "onnxruntime", "openvino"),
}


@pytest.fixture(scope="module")
def loaded() -> dict[str, set[str]]:
    code = "import json, sys, importlib; importlib.import_module(sys.argv[1]); print(json.dumps(sorted(sys.modules)))"
    procs = {
        m: subprocess.Popen([sys.executable, "-c", code, m], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for m in MUST_NOT_LOAD
    }
    out = {}
    for module, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=180)
        assert proc.returncode == 0, stderr[-2000:]
        out[module] = set(json.loads(stdout.strip().splitlines()[-1]))
    return out


@pytest.mark.parametrize("module", sorted(MUST_NOT_LOAD))
def test_importing_a_layer_loads_nothing_above_it(loaded, module):
    heavy = sorted(m for m in loaded[module] if m.split(".")[0] in MUST_NOT_LOAD[module])
    assert not heavy, f"`import {module}` loaded {heavy[:5]}"
