"""The public surface of ``rayq`` and the import layering of the design."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import rayq

PACKAGE = Path(rayq.__file__).resolve().parent

#: The documented public names (rayq/__init__.py docstring, design.md): NNCF's
#: quantize / quantize_with_accuracy_control / Dataset / IgnoredScope /
#: AdvancedQuantizationParameters (and its nested parameter classes, the option enums), the search and its
#: option objects (SearchSpace / SearchOptions / Execution), the job
#: client (submit / attach / SearchJob), the plan value, set_log_level (NNCF's name), the cluster helpers
#: and the error hierarchy of rayq/errors.py.
PUBLIC = {
    "quantize",
    "quantize_with_accuracy_control",
    "search",
    "SearchResult",
    "SearchSpace",
    "SearchOptions",
    "Execution",
    "submit",
    "attach",
    "SearchJob",
    "Dataset",
    "IgnoredScope",
    "Subgraph",
    "AdvancedQuantizationParameters",
    "AdvancedSmoothQuantParameters",
    "AdvancedBiasCorrectionParameters",
    "AdvancedAccuracyRestorerParameters",
    "QuantizationPreset",
    "QuantizationMode",
    "ModelType",
    "TargetDevice",
    "DropType",
    "OverflowFix",
    "QuantPlan",
    "set_log_level",
    "init",
    "shutdown",
    "RayqError",
    "ConfigError",
    "DataError",
    "BackendError",
    "CalibrationError",
    "SearchError",
    "ClusterError",
    "OutputError",
}

HEAVY = ("ray", "onnxruntime", "openvino", "optuna", "onnx")


def test_all_is_exactly_the_documented_public_set():
    assert len(rayq.__all__) == len(set(rayq.__all__)), "duplicates in rayq.__all__"
    assert set(rayq.__all__) == PUBLIC


def test_every_public_name_exists_and_nothing_else_leaks():
    for name in rayq.__all__:
        assert getattr(rayq, name, None) is not None, name
    # any other public rayq-defined object reachable as rayq.<name> must be in __all__
    extra = {
        n
        for n in dir(rayq)
        if not n.startswith("_") and str(getattr(getattr(rayq, n), "__module__", "")).startswith("rayq")
    } - PUBLIC
    assert not extra, f"public attributes not in __all__: {sorted(extra)}"


def test_error_hierarchy():
    for name in (
        "ConfigError",
        "DataError",
        "BackendError",
        "CalibrationError",
        "SearchError",
        "ClusterError",
        "OutputError",
    ):
        assert issubclass(getattr(rayq, name), rayq.RayqError)
    assert issubclass(rayq.ConfigError, ValueError) and issubclass(rayq.DataError, ValueError)


def test_public_callables_have_docstrings_with_examples():
    for name in (
        "quantize",
        "Dataset",
        "IgnoredScope",
        "AdvancedQuantizationParameters",
        "QuantPlan",
        "init",
        "submit",
        "attach",
    ):
        doc = getattr(rayq, name).__doc__ or ""
        assert "Example" in doc, name


def _modules_after_import(module: str) -> set[str]:
    code = f"import json, sys; import {module}; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


@pytest.fixture(scope="module")
def core_modules() -> set[str]:
    return _modules_after_import("rayq.core")


@pytest.mark.parametrize("heavy", HEAVY)
def test_importing_rayq_core_loads_no_heavy_dependency(core_modules, heavy):
    loaded = sorted(m for m in core_modules if m == heavy or m.startswith(heavy + "."))
    assert not loaded, f"`import rayq.core` imported {loaded[:5]}"


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(imported module, at module level?) for every import statement of a file."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    found: list[tuple[str, bool]] = []

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = top and not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                found.extend((alias.name, top) for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                found.extend([(child.module, top)] + [(f"{child.module}.{a.name}", top) for a in child.names])
            visit(child, inner)

    visit(tree, True)
    return found


def _sources() -> dict[str, list[tuple[str, bool]]]:
    return {p.relative_to(PACKAGE.parent).as_posix(): _imports(p) for p in sorted(PACKAGE.rglob("*.py"))}


def _root(module: str) -> str:
    return module.split(".")[0]


def test_only_rayq_distributed_imports_ray():
    offenders = sorted(
        f
        for f, imps in _sources().items()
        if not f.startswith("rayq/distributed/") and any(_root(m) == "ray" for m, _ in imps)
    )
    assert not offenders


def test_only_rayq_tuning_imports_optuna():
    importers = sorted(f for f, imps in _sources().items() if any(_root(m) == "optuna" for m, _ in imps))
    assert importers, "no module imports optuna any more: update this test"
    assert [f for f in importers if not f.startswith("rayq/tuning/")] == []


def test_only_rayq_distributed_imports_ray_somewhere():
    assert any(
        _root(m) == "ray" for f, imps in _sources().items() if f.startswith("rayq/distributed/") for m, _ in imps
    ), "the grep found no ray import at all: update this test"


def test_no_public_name_is_shadowed_by_a_submodule():
    """``rayq.<name>`` must stay the public object even after ``import rayq.<name>.x``."""
    for name in rayq.__all__:
        assert not (PACKAGE / name).is_dir() and not (PACKAGE / f"{name}.py").exists(), name


def test_rayq_distributed_is_imported_lazily():
    """Outside rayq/distributed, ``rayq.distributed`` is only imported inside functions
    (rayq/api/session.py, rayq/api/search.py, the CLI), except for ``rayq.init`` / ``rayq.shutdown``
    which the package re-exports from ``rayq.distributed.cluster``."""
    allowed = {("rayq/__init__.py", "rayq.distributed.cluster")}
    offenders = sorted(
        (f, m)
        for f, imps in _sources().items()
        if not f.startswith("rayq/distributed/")
        for m, top in imps
        if top
        and m.startswith("rayq.distributed")
        and (f, m) not in allowed
        and not m.startswith("rayq.distributed.cluster.")
    )
    assert not offenders


def test_search_does_not_import_plotting_or_sql_until_used():
    """matplotlib (~0.45 s) is imported when a figure is drawn and sqlalchemy (~0.3 s) when
    an RDB storage fails to open: a search that writes no plot and uses a journal pays
    for neither (measured in a fresh interpreter, since this one may have both)."""
    code = (
        "import sys, rayq.api.search, rayq.api.accuracy_control, rayq.cli.main; "
        "print(sorted(m for m in ('matplotlib', 'sqlalchemy') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_core_imports_only_numpy_and_itself():
    allowed_roots = {"rayq", "numpy", "__future__"} | set(sys.stdlib_module_names)
    offenders = sorted(
        (f, m)
        for f, imps in _sources().items()
        if f.startswith("rayq/core/")
        for m, _ in imps
        if _root(m) not in allowed_roots or (_root(m) == "rayq" and not m.startswith(("rayq.core", "rayq.errors")))
    )
    assert not offenders


def test_importing_rayq_does_not_start_or_import_ray():
    assert "ray" not in _modules_after_import("rayq")


def test_only_the_converter_imports_deep_learning_frameworks_and_only_inside_functions():
    """torch / tensorflow / paddle are optional extras: only rayq/backends/convert.py
    imports them, inside the functions that convert such a model."""
    frameworks = {"torch", "tensorflow", "keras", "paddle"}
    importers = {f: [(m, top) for m, top in imps if _root(m) in frameworks] for f, imps in _sources().items()}
    importers = {f: imps for f, imps in importers.items() if imps}
    assert set(importers) == {"rayq/backends/convert.py"}, sorted(importers)
    assert not [m for m, top in importers["rayq/backends/convert.py"] if top]
