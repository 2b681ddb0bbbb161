"""One error family, in one module: every exception class rayq defines lives in rayq/errors.py."""

from __future__ import annotations

import ast
import builtins
from pathlib import Path

import pytest

import rayq
from rayq import errors

PACKAGE = Path(rayq.__file__).resolve().parent

#: Public exception classes defined outside rayq/errors.py (by class name), each with its reason.
ELSEWHERE: dict[str, str] = {}

_BUILTIN_EXCEPTIONS = {
    n
    for n in dir(builtins)
    if isinstance(getattr(builtins, n), type) and issubclass(getattr(builtins, n), BaseException)
}


def _base_name(node: ast.expr) -> str:
    return node.attr if isinstance(node, ast.Attribute) else getattr(node, "id", "")


def _exception_classes(path: Path, known: set[str]) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    return [
        node.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ClassDef)
        and any(
            _base_name(b) in known | _BUILTIN_EXCEPTIONS or _base_name(b).endswith(("Error", "Exception"))
            for b in node.bases
        )
    ]


def test_every_public_exception_class_is_defined_in_rayq_errors():
    known = set(errors.__all__)
    offenders = sorted(
        (p.relative_to(PACKAGE.parent).as_posix(), name)
        for p in PACKAGE.rglob("*.py")
        if p.name != "errors.py"
        for name in _exception_classes(p, known)
        if not name.startswith("_")
    )
    assert [(path, name) for path, name in offenders if name not in ELSEWHERE] == []


def test_the_scan_finds_exception_classes():
    assert set(_exception_classes(PACKAGE / "errors.py", set(errors.__all__))) == set(errors.__all__)
    assert "JobTimeoutError" in {n for p in PACKAGE.rglob("*.py") for n in _exception_classes(p, set(errors.__all__))}


@pytest.mark.parametrize("name", errors.__all__)
def test_every_error_is_a_rayq_error_with_a_docstring(name):
    cls = getattr(errors, name)
    assert issubclass(cls, errors.RayqError) and cls.__doc__, name


def test_old_import_paths_still_work():
    from rayq.pipeline.validation import ValidationFailed, ValidationTimedOut

    assert ValidationFailed is errors.ValidationFailed and ValidationTimedOut is errors.ValidationTimedOut
    assert issubclass(errors.ValidationTimedOut, errors.ValidationFailed)


def test_usage_error_keeps_the_program_name():
    exc = errors.UsageError("unrecognized arguments: --x", "rayq search")
    assert exc.prog == "rayq search" and str(exc) == "unrecognized arguments: --x"
