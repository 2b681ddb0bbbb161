"""Helpers shared by the subcommands: config from file + flags, Ray.

Outputs go through :mod:`rayq.storage` (one resolution of paths and URIs, atomic
publication, the output-folder lock).

These are the only places the CLI decides policy; subcommand modules stay small.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from typing import Any

from rayq.api import config as rayq_config
from rayq.api.options import OPTION_CLASSES
from rayq.errors import ConfigError

log = logging.getLogger("rayq.cli")

#: Marks a flag the user did not give (``None`` can be a meaningful value).
UNSET = object()


def build_config(
    command: str,
    config_path: str | None,
    fields: Mapping[str, Any],
    nested: Mapping[str, Mapping[str, Any]] | None = None,
) -> Any:
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


#: ``--fast/--exact/--no-bias-correction`` -> the ``fast_bias_correction`` field (NNCF's encoding).
BIAS_CORRECTION = {"fast": True, "exact": False, "none": None}


def add_model_argument(p: argparse.ArgumentParser) -> None:
    """The optional positional ``MODEL`` of ``rayq quantize`` and ``rayq search`` (a config
    file may name it instead; "not given" stays distinguishable from any value)."""
    p.add_argument(
        "model",
        nargs="?",
        default=argparse.SUPPRESS,
        metavar="MODEL",
        help="model path: .onnx, .xml; converted first: TorchScript .pt, TensorFlow SavedModel "
        "folder, .keras or .pb, .tflite, .pdmodel",
    )


def add_bias_correction_flags(group: Any) -> None:
    """The three mutually exclusive bias-correction flags of the base plan (dest ``bias_correction``)."""
    bc = group.add_mutually_exclusive_group()
    u = argparse.SUPPRESS
    bc.add_argument(
        "--fast-bias-correction",
        dest="bias_correction",
        action="store_const",
        const="fast",
        default=u,
        help="fast bias correction (the default)",
    )
    bc.add_argument(
        "--exact-bias-correction",
        dest="bias_correction",
        action="store_const",
        const="exact",
        default=u,
        help="data-driven bias correction (slower, sometimes more accurate)",
    )
    bc.add_argument(
        "--no-bias-correction",
        dest="bias_correction",
        action="store_const",
        const="none",
        default=u,
        help="no bias correction",
    )


def add_option_flags(p: argparse.ArgumentParser) -> dict[str, str]:
    """One flag per field of :class:`~rayq.api.options.SearchSpace`, ``SearchOptions`` and
    ``Execution``, typed and described from the field itself (``n_trials`` is
    ``--n-trials N``, a boolean ``early_stop`` is ``--early-stop`` / ``--no-early-stop``,
    a list ``presets`` takes several values, a mapping ``worker_resources`` JSON), so the
    CLI offers exactly the options of the API and the config files.

    Returns:
        argparse dest -> config field (the same names).
    """
    fields = {}
    for cls in OPTION_CLASSES:
        group = p.add_argument_group(f"{cls.__name__} (rayq.{cls.__name__})")
        schema = cls.model_json_schema()["properties"]
        for name, info in cls.model_fields.items():
            flag = "--" + name.replace("_", "-")
            kind = _flag_kind(schema[name])
            help_text = f"{info.description} (default: {_shown(info.default)})"
            if kind == "boolean":
                group.add_argument(
                    flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_text
                )
            else:
                convert, choices, many = _flag_parser(schema[name])
                group.add_argument(
                    flag,
                    type=convert,
                    choices=choices,
                    nargs="+" if many else None,
                    default=argparse.SUPPRESS,
                    metavar=None if choices else name.upper(),
                    help=help_text,
                )
            fields[name] = name
    return fields


def _shown(value: Any) -> str:
    return "null" if value is None else json.dumps(list(value) if isinstance(value, tuple) else value)


def _flag_kind(prop: dict) -> str:
    types = [v for v in prop.get("anyOf", [prop]) if v.get("type") != "null"]
    return types[0].get("type", "string") if types else "string"


_SCALARS: dict[str, Callable[[str], Any]] = {"integer": int, "number": float, "string": str}


def _flag_parser(prop: dict) -> tuple[Callable[[str], Any], list | None, bool]:
    """(value parser, choices, takes several values) of a field from its JSON schema."""
    member = next(v for v in prop.get("anyOf", [prop]) if v.get("type") != "null")
    many = member.get("type") == "array"
    item = member.get("items", {}) if many else member
    if item.get("type") == "object":
        return _json_mapping, None, False
    values = [v for v in item.get("anyOf", [item]) if v.get("type") != "null" or many]
    nullable = any(v.get("type") == "null" for v in item.get("anyOf", []))
    if len(values) == 1 and "enum" in values[0]:
        return str, list(values[0]["enum"]), many
    scalar = _SCALARS.get(next((v.get("type") for v in values if v.get("type") != "null"), "string"), str)
    return (_nullable(scalar) if nullable else scalar), None, many


def _nullable(convert: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        return None if text.lower() in ("none", "null") else convert(text)

    parse.__name__ = getattr(convert, "__name__", "value")
    return parse


def _json_mapping(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"expected a JSON mapping, got {text!r}: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON mapping, got {text!r}")
    return value


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
    log.warning(
        "output %r is relative, so this Ray job writes it inside Ray's temporary copy of the working "
        'dir (%s), not where it was submitted from; give an absolute path (e.g. "$PWD/%s" on the '
        "submitting machine) or a URI such as s3://...",
        output,
        os.path.join(cwd, output),
        output,
    )
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
