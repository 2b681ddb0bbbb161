"""The options of a search, as three frozen objects: one definition for the Python API,
the YAML configs and the CLI.

- :class:`SearchSpace`: *what* is searched (presets, range estimators, bias
  corrections, SmoothQuant alphas, how fallback groups are ranked).
- :class:`SearchOptions`: *how* the study proceeds (trials, seed, exploration,
  finalists, early stopping).
- :class:`Execution`: *where and how* it runs (target runtime, Ray workers and their
  resources, cache, study storage, timeouts, latency threads).

Each field is declared once here, with its type, default and check (pydantic v2).
``rayq.search(..., space=, options=, execution=)`` takes the objects (or their fields
as NNCF-style flat keywords, see :func:`resolve`); :mod:`rayq.api.config_schema` builds
the flat ``rayq search`` config file schema from these fields, and ``rayq search``
generates one flag per field (:func:`rayq.cli.common.add_option_flags`), so the three
front doors cannot drift apart (``tests/api/test_options.py`` checks it).

The accuracy budget (``max_drop``, ``drop_type``) is the question asked, not an
option: it stays a keyword of :func:`rayq.search`, as in NNCF.

Example:
    >>> from rayq.api.options import Execution, SearchOptions, SearchSpace
    >>> SearchSpace(presets=["mixed"]).presets
    ('mixed',)
    >>> SearchOptions(n_trials=0)
    Traceback (most recent call last):
    ...
    rayq.errors.ConfigError: invalid SearchOptions: n_trials=0 must be >= 1
    >>> Execution(num_workers=4).replace(num_workers=1).num_workers
    1
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Annotated, Any, Literal, Self, TypeAlias, cast

from pydantic import BaseModel, ConfigDict, Field, Strict, ValidationError, field_validator, model_validator

from rayq.core.enums import plain
from rayq.core.plan import ACTIVATION_ESTIMATORS, BIAS_CORRECTIONS, PRESETS
from rayq.errors import ConfigError

Int = Annotated[int, Strict()]
Float = Annotated[float, Strict()]  # strict floats still take integers
Bool = Annotated[bool, Strict()]
Str = Annotated[str, Strict()]
PositiveInt = Annotated[int, Strict(), Field(ge=1)]
Seconds = Annotated[float, Strict(), Field(gt=0)]
Alpha = Annotated[float, Strict(), Field(ge=0, le=1)]
RUNTIMES = ("onnxruntime", "openvino")
if TYPE_CHECKING:  # a Literal of a tuple built elsewhere is valid for pydantic, not for a static checker
    Preset: TypeAlias = str
    Estimator: TypeAlias = str
    BiasCorrection: TypeAlias = str
    Runtime: TypeAlias = str
else:
    Preset = Literal[PRESETS]
    Estimator = Literal[ACTIVATION_ESTIMATORS]
    BiasCorrection = Literal[BIAS_CORRECTIONS]
    Runtime = Literal[RUNTIMES]


class Options(BaseModel):
    """Base of the option objects: frozen, unknown fields refused, enum members taken
    by value (``rayq.QuantizationPreset.MIXED`` is ``"mixed"``)."""

    model_config = ConfigDict(frozen=True, extra="forbid", protected_namespaces=())

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise ConfigError(
                f"invalid {type(self).__name__}: {'; '.join(messages(exc.errors(include_url=False), python=True))}"
            ) from None

    @model_validator(mode="before")
    @classmethod
    def _plain_values(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            return data
        return {k: tuple(plain(x) for x in v) if isinstance(v, (list, tuple)) else plain(v) for k, v in data.items()}

    def replace(self, **changes: Any) -> Self:
        """A copy with ``changes`` applied, checked like a new object."""
        return type(self)(**{**self.model_dump(), **changes})

    def to_dict(self) -> dict:
        """The fields as plain YAML/JSON values (tuples as lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.model_dump().items()}


class SearchSpace(Options):
    """What a search tries: the joint space of presets, range estimators, bias
    corrections and SmoothQuant alphas, explored together with FP32 fallback sets.

    Example:
        >>> SearchSpace(estimators=("minmax",), bias_corrections=("fast",)).presets is None
        True
    """

    presets: tuple[Preset, ...] | None = Field(
        None, description="presets the study may try (null: only `preset` when given, else all)"
    )
    estimators: tuple[Estimator, ...] = Field(
        ("mean_minmax", "minmax", "quantile", "histogram_mse"), description="activation range estimators tried"
    )
    bias_corrections: tuple[BiasCorrection, ...] = Field(("fast", "none"), description="bias corrections tried")
    smooth_quant_alphas: tuple[Alpha | None, ...] | None = Field(
        None, description="SmoothQuant alphas tried, transformers only (null: 0.5, 0.8, 0.95)"
    )
    ranking_subset_size: PositiveInt = Field(
        300, description="validation items (those FP32 and INT8 disagree on) that rank fallback groups"
    )

    @field_validator("estimators", "bias_corrections")
    @classmethod
    def _not_empty(cls, value: tuple) -> tuple:
        if not value:
            raise ValueError("at least one choice")
        return value


class SearchOptions(Options):
    """How the study proceeds: its size, seed and stopping rules.

    Example:
        >>> SearchOptions(n_trials=8, seed=1).finalists
        4
    """

    n_trials: PositiveInt | None = Field(
        32, description="total trials, across resumes (null: no cap, only with explore: false)"
    )
    seed: Int = Field(0, description="sampler seed: the same seed gives the same plan on any worker count")
    explore: Bool = Field(True, description="let Optuna explore the joint space after the fallback candidates")
    generation_size: PositiveInt = Field(4, description="trials asked from the sampler at once")
    finalists: PositiveInt = Field(4, description="feasible plans timed against each other and FP32 at the end")
    early_stop: Bool = Field(
        True,
        description="stop a candidate's validation once its drop is sure to exceed max_drop "
        "(needs per-item values whose mean is the metric)",
    )

    @model_validator(mode="after")
    def _cap(self) -> SearchOptions:
        if self.n_trials is None and self.explore:
            raise ConfigError("n_trials=None must be >= 1 (None, no cap, only with explore=False)")
        return self


class Execution(Options):
    """Where and how a search runs: runtime, Ray workers, cache, storage and timeouts.

    Example:
        >>> Execution(num_workers=1, cache=False).target is None
        True
    """

    target: Runtime | None = Field(None, description="runtime to validate and time on (null: the model's own)")
    address: Str | None = Field(None, description="Ray cluster to join (null: RAY_ADDRESS, else a local Ray)")
    num_workers: PositiveInt | None = Field(
        None, description="evaluations at once, as Ray tasks (null: every CPU of the cluster; 1: in-process)"
    )
    worker_resources: dict[Str, Any] | None = Field(
        None, description='Ray resources per evaluation task, e.g. {"num_cpus": 2, "num_gpus": 1}'
    )
    cache: Bool = Field(True, description="reuse and store calibration statistics in the Parquet cache")
    storage: Str | None = Field(
        None, description="Optuna storage: a journal path or an RDB URL (null: a journal in output)"
    )
    study_name: Str | None = Field(None, description="study name (null: derived from model, data and settings)")
    timeout: Seconds | None = Field(None, description="seconds after which no new generation starts")
    validation_timeout: Seconds | None = Field(
        None, description="seconds one validation call may take (null: 10x the FP32 validation, at least 60)"
    )
    latency_threads: Annotated[int, Strict(), Field(ge=0)] = Field(
        0, description="threads of each latency measurement (0: the runtime's default)"
    )


OPTION_CLASSES: tuple[type[Options], ...] = (SearchSpace, SearchOptions, Execution)


def resolve(
    space: SearchSpace | None,
    options: SearchOptions | None,
    execution: Execution | None,
    flat: Mapping[str, Any],
    *,
    allowed: frozenset[str] = frozenset(),
    accepts: tuple[type[Options], ...] = OPTION_CLASSES,
) -> tuple[SearchSpace, SearchOptions, Execution, dict]:
    """The three option objects, with NNCF-style flat keywords applied on top.

    Args:
        space, options, execution: The objects given (None: the defaults).
        flat: Keywords such as ``n_trials=8`` or ``num_workers=1``: each goes to the
            object that owns the field (and wins over the object's value).
        allowed: Other keywords the caller takes (returned as the last item).
        accepts: The option classes whose fields the caller takes flat (``rayq.quantize``:
            only :class:`Execution`'s).

    Raises:
        ConfigError: An object of the wrong type, an unknown keyword (with the valid
            ones), or a value its field refuses.

    Example:
        >>> s, o, e, rest = resolve(None, None, None, {"n_trials": 3, "num_workers": 1, "preset": "mixed"},
        ...                         allowed=frozenset({"preset"}))
        >>> o.n_trials, e.num_workers, rest
        (3, 1, {'preset': 'mixed'})
    """
    objs = []
    for cls, given in zip(OPTION_CLASSES, (space, options, execution)):
        if given is not None and not isinstance(given, cls):
            raise ConfigError(f"{cls.__name__.lower()}: expected a rayq.{cls.__name__}, got {type(given).__name__}")
        changes = {k: v for k, v in flat.items() if k in cls.model_fields and cls in accepts and k not in allowed}
        obj = given if given is not None else None
        objs.append(obj.replace(**changes) if obj is not None and changes else obj or cls(**changes))
    owned = {name for cls in accepts for name in cls.model_fields}
    unknown = sorted(set(flat) - owned - allowed)
    if unknown:
        raise ConfigError(f"unknown keyword argument(s) {unknown}; valid: {sorted(owned | allowed)}")
    rest = {k: v for k, v in flat.items() if k in allowed}
    return cast(SearchSpace, objs[0]), cast(SearchOptions, objs[1]), cast(Execution, objs[2]), rest


# -- error messages: one wording for Python objects and config files ------------------------

_EXPECTED = {  # pydantic error type -> what the field expects, in words
    "int_type": "an integer",
    "int_parsing": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "string_type": "a string",
    "tuple_type": "a list",
    "list_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "none_required": "null",
    "string_pattern_mismatch": "a 'package.module:function' reference",
}
_UNION_TAGS = {"str", "int", "float", "bool", "none", "dict", "list", "tuple", "literal"}


def _field_loc(loc: tuple) -> tuple:
    """The error location without pydantic's union-member tags (``str``, ``SweepEntryModel``...)."""
    return tuple(
        p
        for p in loc
        if not (
            isinstance(p, str) and (p in _UNION_TAGS or "[" in p or p.endswith("Model") or p.startswith("function-"))
        )
    )


def _where(loc: tuple) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(config)"


def _expected(kind: str, msg: str) -> str:
    if kind in _EXPECTED:
        return _EXPECTED[kind]
    msg = msg.removeprefix("Input should be ").removeprefix("Value error, ")
    if kind.startswith(("greater_than", "less_than")):
        return f"a number {msg}"
    if kind == "too_short":
        return msg.replace("List should have", "a list with").replace(" after validation", "").split(",")[0]
    return msg[:1].lower() + msg[1:]


_BOUNDS = {
    "greater_than_equal": (">=", "ge"),
    "greater_than": (">", "gt"),
    "less_than_equal": ("<=", "le"),
    "less_than": ("<", "lt"),
}


def _say(loc: tuple, want: list[str], value: Any, python: bool) -> str:
    if not python:
        return f"{_where(loc)}: expected {' or '.join(want)}, got {value!r} ({type(value).__name__})"
    if len(loc) > 1:  # an item of a list: "estimators: 'median' (item [0]) must be ..."
        return f"{_where(loc[:1])}: {value!r} (item {_where(loc[1:])}) must be {' or '.join(want)}"
    return f"{_where(loc)}={value!r} must be {' or '.join(want)}"


def _python_want(kind: str, e: Mapping[str, Any]) -> str:
    """What a keyword argument must be, in Python terms (``>= 1``, ``an integer``)."""
    if kind in _BOUNDS:
        op, key = _BOUNDS[kind]
        return f"{op} {e.get('ctx', {}).get(key)}"
    return _expected(kind, e["msg"])


def messages(errors: Sequence[Mapping[str, Any]], *, python: bool = False) -> list[str]:
    """One message per wrong field: what it expects (all union members) and the value
    given; ``python`` words it for keyword arguments (``n_trials=0: expected ...``)."""
    located = [(_field_loc(e["loc"]), e) for e in errors]
    deeper = {loc[:i] for loc, _ in located for i in range(len(loc))}
    expected: dict[tuple, list[str]] = {}
    out: dict[tuple, str] = {}
    for loc, e in located:
        where, kind, value = _where(loc), e["type"], e.get("input")
        if kind == "extra_forbidden":
            out[loc] = f"unknown field {where!r}"
        elif kind == "missing":
            out[loc] = f"{where}: required field missing"
        elif not loc and kind == "value_error":  # a check across fields: its own message
            out[loc] = e["msg"].removeprefix("Value error, ")
        elif loc not in deeper:  # a union member that fits better reports inside this value
            want = _python_want(kind, e) if python else _expected(kind, e["msg"])
            expected.setdefault(loc, [])
            if want not in expected[loc]:
                expected[loc].append(want)
            out[loc] = _say(loc, expected[loc], value, python)
    return list(out.values())
