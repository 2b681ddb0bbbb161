"""Helpers shared by the subcommands: config from file + flags, Ray.

Outputs go through :mod:`rayq.storage` (one resolution of paths and URIs, atomic
publication, the output-folder lock).

These are the only places the CLI decides policy; subcommand modules stay small.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from typing import Any

from rayq.api import config as rayq_config
from rayq.errors import ConfigError, RayqError

log = logging.getLogger("rayq.cli")

#: Marks a flag the user did not give (``None`` can be a meaningful value).
UNSET = object()


class InputError(RayqError):
    """Bad input detected by the CLI (unreadable model, unwritable output...): exit code 2."""


def build_config(command: str, config_path: str | None, fields: Mapping[str, Any],
                 nested: Mapping[str, Mapping[str, Any]] | None = None) -> Any:
    """The frozen config of ``command`` from an optional YAML file plus flag values.

    Args:
        command: ``quantize``, ``search`` or ``sweep`` (a registered config class).
        config_path: YAML file read with :func:`rayq.api.config.load`, or None.
        fields: Top-level field -> value given on the command line; values equal to
            :data:`UNSET` are ignored, ``None`` is an explicit "none" (e.g. no bias
            correction) and overrides the file too.
        nested: Field -> {sub-field: value} for dataclass-valued fields
            (``advanced``, ``ignored_scope``); each given sub-field replaces the
            file's, the other sub-fields are kept.

    Returns:
        The validated config object (flags win over the file).

    Example:
        >>> cfg = build_config("quantize", None, {"model": "m.onnx", "calibration": "c.npz",
        ...                    "output": "out/m.onnx", "preset": UNSET},
        ...                    {"advanced": {"overflow_fix": "disable"}})
        >>> cfg.preset, cfg.advanced.overflow_fix
        (None, 'disable')
    """
    given = {k: v for k, v in fields.items() if v is not UNSET}
    if config_path is not None:
        overrides = {k: v for k, v in given.items() if v is not None}
        cfg = rayq_config.load(config_path, command=command, overrides=overrides)
        explicit_none = {k: None for k, v in given.items() if v is None}
        if explicit_none:  # rayq.api.config.load drops None overrides
            cfg = _replace(cfg, explicit_none)
    else:
        cfg = rayq_config.from_dict(given, command=command)
    changes = {}
    for name, sub in (nested or {}).items():
        sub = {k: v for k, v in sub.items() if v is not UNSET}
        if sub:
            changes[name] = _replace(getattr(cfg, name), sub)
    return _replace(cfg, changes) if changes else cfg


def _replace(obj: Any, changes: Mapping[str, Any]) -> Any:
    try:
        return replace(obj, **changes)
    except TypeError as exc:  # an unknown field name
        raise ConfigError(str(exc)) from exc


def resolve_function(ref: str, name: str) -> Callable:
    """Import a ``module:function`` reference, with the working directory importable.

    Console scripts do not put the working directory on ``sys.path`` (``python -m``
    does); references like ``examples.digits.metric:accuracy`` are meant relative to
    the project folder, which is also the working directory of a Ray job.
    """
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    return rayq_config.resolve_reference(ref, name)


#: Where Ray unpacks a job's ``--working-dir`` (the job's current directory).
RAY_WORKING_DIR_COPY = "runtime_resources/working_dir_files"


def warn_relative_job_output(output: str | None, cwd: str | None = None) -> bool:
    """Warn when a relative ``output`` of a Ray job lands in Ray's working-dir copy.

    ``ray job submit --working-dir .`` runs the job inside a temporary copy of the
    project; a relative output is written there, not where the user submitted from
    (cluster/README.md, section 0). Returns whether it warned.

    Example:
        >>> warn_relative_job_output("runs/x", "/tmp/ray/session_1/runtime_resources/working_dir_files/_ray_pkg_1")
        True
    """
    if not output or "://" in output or os.path.isabs(output):
        return False
    cwd = cwd or os.getcwd()
    if RAY_WORKING_DIR_COPY not in cwd.replace(os.sep, "/"):
        return False
    log.warning("output %r is relative, so this Ray job writes it inside Ray's temporary copy of the working "
                "dir (%s), not where it was submitted from; give an absolute path (e.g. \"$PWD/%s\" on the "
                "submitting machine) or a URI such as s3://...", output, os.path.join(cwd, output), output)
    return True


def file_size(paths: list[str] | tuple[str, ...]) -> int:
    """Total size in bytes of the files that exist among ``paths``."""
    return sum(os.path.getsize(p) for p in paths if os.path.isfile(p))


def mb(size: int) -> str:
    return f"{size / 1e6:.2f} MB"


@contextlib.contextmanager
def ray_scope(address: str | None, needed: bool) -> Iterator[None]:
    """Connect to ``address`` when Ray is ``needed``; shut down a Ray this scope started.

    Without an address, ``rayq`` starts a local Ray on demand (or joins the cluster
    of ``RAY_ADDRESS``, as inside ``ray job submit``). A Ray that was already
    initialised (a notebook, a test fixture) is left running.
    """
    was_up = _ray_initialized()
    if needed and address:
        from rayq.distributed.cluster import init

        init(address)
    try:
        yield
    finally:
        if not was_up and _ray_initialized():
            from rayq.distributed.cluster import shutdown

            shutdown()


def _ray_initialized() -> bool:
    from rayq.distributed.cluster import is_connected

    return is_connected()
