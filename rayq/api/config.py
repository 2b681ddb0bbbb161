"""Frozen run configurations, shared by the Python API, the CLI and YAML files.

``configs/README.md`` documents every field. A mapping (a YAML file, CLI flags) is
first checked against the typed schema of :mod:`rayq.api.config_schema` (every wrong
field named with its expected type and value), then built into the frozen config
objects below, which the rest of rayq uses; these check their values again when
built directly from Python. A config is saved as ``config.yaml`` next to each
run's outputs.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import yaml

from rayq.api import config_schema
from rayq.api.options import OPTION_CLASSES, Execution, Options, SearchOptions, SearchSpace
from rayq.core.plan import PRESETS, AdvancedQuantizationParameters
from rayq.core.scope import IgnoredScope
from rayq.errors import ConfigError

OUTPUT_FORMATS = ("onnx", "openvino")


def _check_choice(name: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ConfigError(f"{name}={value!r} is not valid; choose one of {list(allowed)}")


@dataclass(frozen=True)
class QuantizeConfig:
    """Configuration of ``rayq quantize`` (basic post-training quantization).

    Example:
        >>> QuantizeConfig(model="m.onnx", calibration="calib.npz", output="out/m_int8.onnx").preset is None
        True
    """

    model: str
    calibration: str
    output: str
    preset: str | None = None
    target_device: str = "ANY"
    subset_size: int = 300
    fast_bias_correction: bool | None = True
    model_type: str | None = None
    ignored_scope: IgnoredScope = field(default_factory=IgnoredScope)
    advanced: AdvancedQuantizationParameters = field(default_factory=AdvancedQuantizationParameters)
    num_workers: int | None = None
    output_format: str | None = None
    address: str | None = None
    validation: str | None = None
    validation_fn: str | None = None
    latency_batch: int = 1

    def __post_init__(self) -> None:
        if self.preset is not None:
            _check_choice("preset", self.preset, PRESETS)
        if self.latency_batch < 1:
            raise ConfigError(f"latency_batch={self.latency_batch} must be >= 1")
        if self.output_format is not None:
            _check_choice("output_format", self.output_format, OUTPUT_FORMATS)
        if self.subset_size < 1:
            raise ConfigError(f"subset_size={self.subset_size} must be >= 1")
        if self.num_workers is not None and self.num_workers < 1:
            raise ConfigError(f"num_workers={self.num_workers} must be >= 1")
        if self.validation_fn is not None:
            check_reference(self.validation_fn, "validation_fn")

    def to_dict(self) -> dict:
        data = asdict(self)
        data["ignored_scope"] = self.ignored_scope.to_dict()
        data["advanced"] = asdict(self.advanced)
        return {"command": "quantize", **data}


def _default(name: str) -> Any:
    """The default of an option field: declared once, in :mod:`rayq.api.options`."""
    for cls in OPTION_CLASSES:
        if name in cls.model_fields:
            return cls.model_fields[name].get_default(call_default_factory=True)
    raise KeyError(name)


@dataclass(frozen=True)
class SearchConfig:
    """Configuration of ``rayq search``: the arguments of :func:`rayq.search`, flat.

    The option fields (``presets`` ... ``latency_threads``) are those of
    :class:`~rayq.api.options.SearchSpace`, :class:`~rayq.api.options.SearchOptions` and
    :class:`~rayq.api.options.Execution`, with their defaults and checks; the
    :attr:`space`, :attr:`options` and :attr:`execution` properties give the objects.

    Example:
        >>> cfg = SearchConfig(model="m.onnx", calibration="c.npz", validation="v.npz",
        ...                    validation_fn="pkg.metrics:accuracy", n_trials=8)
        >>> cfg.max_drop, cfg.options.n_trials, cfg.execution.cache
        (0.01, 8, True)
    """

    model: str
    calibration: str
    validation: str
    validation_fn: str
    output: str | None = None
    max_drop: float = 0.01
    drop_type: str = "absolute"
    preset: str | None = None
    model_type: str | None = None
    target_device: str = "ANY"
    subset_size: int = 300
    fast_bias_correction: bool | None = True
    ignored_scope: IgnoredScope = field(default_factory=IgnoredScope)
    advanced: AdvancedQuantizationParameters = field(default_factory=AdvancedQuantizationParameters)
    convert_to: str | None = None
    # SearchSpace
    presets: tuple[str, ...] | None = _default("presets")
    estimators: tuple[str, ...] = _default("estimators")
    bias_corrections: tuple[str, ...] = _default("bias_corrections")
    smooth_quant_alphas: tuple[float | None, ...] | None = _default("smooth_quant_alphas")
    ranking_subset_size: int = _default("ranking_subset_size")
    # SearchOptions
    n_trials: int | None = _default("n_trials")
    seed: int = _default("seed")
    explore: bool = _default("explore")
    generation_size: int = _default("generation_size")
    finalists: int = _default("finalists")
    early_stop: bool = _default("early_stop")
    # Execution
    target: str | None = _default("target")
    address: str | None = _default("address")
    num_workers: int | None = _default("num_workers")
    # the default is None (RUF009 guards against a shared mutable default; None is not one)
    worker_resources: dict | None = _default("worker_resources")  # noqa: RUF009
    cache: bool = _default("cache")
    storage: str | None = _default("storage")
    study_name: str | None = _default("study_name")
    timeout: float | None = _default("timeout")
    validation_timeout: float | None = _default("validation_timeout")
    latency_threads: int = _default("latency_threads")

    def __post_init__(self) -> None:
        check_reference(self.validation_fn, "validation_fn")
        if not self.max_drop >= 0:
            raise ConfigError(f"max_drop={self.max_drop} must be >= 0")
        if self.drop_type not in ("absolute", "relative"):
            raise ConfigError(f"drop_type={self.drop_type!r} must be 'absolute' or 'relative'")
        for name in ("presets", "estimators", "bias_corrections", "smooth_quant_alphas"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, tuple(getattr(self, name)))
        self.space, self.options, self.execution  # noqa: B018 (the option objects check their fields)

    def _options(self, cls: type[Options]) -> Any:
        return cls(**{name: getattr(self, name) for name in cls.model_fields})

    @property
    def space(self) -> SearchSpace:
        """What is searched (the :class:`~rayq.api.options.SearchSpace` fields)."""
        return self._options(SearchSpace)

    @property
    def options(self) -> SearchOptions:
        """How the study proceeds (the :class:`~rayq.api.options.SearchOptions` fields)."""
        return self._options(SearchOptions)

    @property
    def execution(self) -> Execution:
        """Where and how it runs (the :class:`~rayq.api.options.Execution` fields)."""
        return self._options(Execution)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["ignored_scope"] = self.ignored_scope.to_dict()
        data["advanced"] = asdict(self.advanced)
        for name in ("presets", "estimators", "bias_corrections", "smooth_quant_alphas"):
            if data[name] is not None:
                data[name] = list(data[name])
        return {"command": "search", **data}


@dataclass(frozen=True)
class SweepConfig:
    """Configuration of ``rayq sweep``: many searches in one job.

    ``models`` entries are mappings with ``model`` (a path) or ``glob`` (a pattern),
    an optional ``name`` and any :class:`SearchConfig` field overriding ``defaults``.
    """

    models: tuple[dict, ...]
    output: str
    defaults: dict = field(default_factory=dict)
    max_concurrent: int = 2
    address: str | None = None

    def __post_init__(self) -> None:
        if not self.models:
            raise ConfigError("a sweep needs at least one entry in 'models'")
        entries = []
        for i, entry in enumerate(self.models):
            if isinstance(entry, str):
                entry = {"model": entry}
            if not isinstance(entry, dict) or ("model" in entry) == ("glob" in entry):
                raise ConfigError(f"models[{i}] must be a mapping with exactly one of 'model' or 'glob'")
            entries.append(dict(entry))
        object.__setattr__(self, "models", tuple(entries))
        if self.max_concurrent < 1:
            raise ConfigError(f"max_concurrent={self.max_concurrent} must be >= 1")
        unknown = set(self.defaults) - {f.name for f in fields(SearchConfig)}
        if unknown:
            raise ConfigError(f"unknown field(s) in sweep defaults: {sorted(unknown)}")

    def to_dict(self) -> dict:
        return {
            "command": "sweep",
            "models": [dict(m) for m in self.models],
            "output": self.output,
            "defaults": dict(self.defaults),
            "max_concurrent": self.max_concurrent,
            "address": self.address,
        }


def check_reference(ref: str, name: str) -> None:
    """``module:function`` references are the only way configs name code."""
    module, _, func = ref.partition(":")
    if (
        not module
        or not func
        or not all(p.isidentifier() for p in module.split("."))
        or not all(p.isidentifier() for p in func.split("."))
    ):
        raise ConfigError(f"{name}={ref!r} must be a 'package.module:function' reference")


def resolve_reference(ref: str, name: str = "reference"):
    """Import the function named by a ``module:function`` reference (never eval)."""
    import importlib
    import sys

    check_reference(ref, name)
    # references are relative to the project folder (the working directory, also of a Ray job)
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    module, _, func = ref.partition(":")
    try:
        obj = importlib.import_module(module)
        for part in func.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"{name}={ref!r} cannot be imported: {exc}") from exc
    if not callable(obj):
        raise ConfigError(f"{name}={ref!r} is not callable")
    return obj


def build(cls, data: dict) -> Any:
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            f"unknown {data.get('command', cls.__name__)} config field(s): {unknown}; valid fields: {sorted(names)}"
        )
    data = dict(data)
    if "ignored_scope" in data:
        data["ignored_scope"] = IgnoredScope.from_dict(data["ignored_scope"])
    if "advanced" in data:
        data["advanced"] = AdvancedQuantizationParameters.from_dict(data["advanced"])
    missing = [f.name for f in fields(cls) if f.name not in data and f.default is f.default_factory is _MISSING]
    if missing:
        raise ConfigError(f"{cls.__name__} is missing required field(s): {missing}")
    try:
        return cls(**data)
    except TypeError as exc:
        raise ConfigError(str(exc)) from exc


from dataclasses import MISSING as _MISSING  # noqa: E402

_REGISTRY: dict[str, type] = {"quantize": QuantizeConfig, "search": SearchConfig, "sweep": SweepConfig}


def from_dict(data: dict, *, command: str | None = None, base_dir: str | None = None) -> Any:
    """Build the config of ``command`` (or ``data['command']``) from a mapping."""
    if not isinstance(data, dict):
        raise ConfigError("a config must be a mapping of field names to values")
    data = dict(data)
    cmd = data.pop("command", None) or command
    if not isinstance(cmd, str) or cmd not in _REGISTRY:
        raise ConfigError(f"config 'command' must be one of {sorted(_REGISTRY)}, got {cmd!r}")
    if command and cmd != command:
        raise ConfigError(f"config is for 'rayq {cmd}', not 'rayq {command}'")
    if cmd in config_schema.MODELS:
        data = config_schema.validate(data, cmd)
    if base_dir:
        for key in ("model", "calibration", "validation"):  # paths relative to the config file
            value = data.get(key)
            if isinstance(value, str) and "://" not in value and not os.path.isabs(value):
                candidate = os.path.join(base_dir, value)
                if not os.path.exists(value) and os.path.exists(candidate):
                    data[key] = candidate
    return build(_REGISTRY[cmd], data)


def load(path: str, *, command: str | None = None, overrides: dict | None = None) -> Any:
    """Read a YAML config file (``yaml.safe_load``), apply ``overrides``, validate."""
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}
    except OSError as exc:
        raise ConfigError(f"cannot read config {path!r}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"config {path!r} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(
            f"config {path!r} must be a mapping of field names to values (field: value lines), "
            f"not a {type(data).__name__}: {data!r:.80}"
        )
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return from_dict(data, command=command)


def dump(config: Any) -> str:
    """The config as YAML text (round-trips through :func:`from_dict`)."""
    return yaml.safe_dump(config.to_dict(), sort_keys=False)
