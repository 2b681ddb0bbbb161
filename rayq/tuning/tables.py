"""Typed Arrow schemas for the tables a search writes (``trials.parquet``, ``pareto.parquet``).

Every column has a real type, whatever the values of one run: ``fallback`` is
``list<string>``, ``ignored_scope`` and ``plan`` are structs (``plan`` is the whole
:class:`~rayq.QuantPlan`; :func:`plan_of` rebuilds it from a row), text columns
such as ``error`` and ``model_type`` are ``string`` even when every value is null.

Example:
    >>> import pandas as pd
    >>> from rayq.core.plan import QuantPlan
    >>> frame = pd.DataFrame([{"number": 0, "error": None, "fallback": ["conv1"], "plan": QuantPlan().to_dict()}])
    >>> table = to_arrow(frame)
    >>> table.schema.field("fallback").type.value_type, table.schema.field("error").type
    (DataType(string), DataType(string))
"""

from __future__ import annotations

import io
from dataclasses import fields
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from rayq.core.plan import QuantPlan

STRINGS = pa.list_(pa.string())
SCOPE = pa.struct(
    [
        ("names", STRINGS),
        ("patterns", STRINGS),
        ("types", STRINGS),
        ("subgraphs", pa.list_(pa.struct([("inputs", STRINGS), ("outputs", STRINGS)]))),
        ("validate", pa.bool_()),
    ]
)


def _field_type(annotation: str) -> pa.DataType:
    """An Arrow type for a QuantPlan field annotation (``str | None``, ``tuple[str, ...]``...)."""
    if "IgnoredScope" in annotation:
        return SCOPE
    if annotation.startswith("tuple"):
        return STRINGS
    for name, arrow in (("bool", pa.bool_()), ("float", pa.float64()), ("int", pa.int64())):
        if name in annotation:
            return arrow
    return pa.string()


PLAN_FIELDS = {f.name: _field_type(str(f.type)) for f in fields(QuantPlan)}
PLAN = pa.struct(list(PLAN_FIELDS.items()))

#: Trial columns that are not plan fields; any other column is float64.
COLUMNS = {
    "number": pa.int64(),
    "status": pa.string(),
    "source": pa.string(),
    "feasible": pa.bool_(),
    "reused": pa.bool_(),
    "error": pa.string(),
    "remeasured": pa.bool_(),
    "chosen": pa.bool_(),
    "plan_key": pa.string(),
    "int8": pa.bool_(),
    "n_fallback": pa.int64(),
    "plan": PLAN,
    "early_stopped": pa.bool_(),
    "validation_items_saved": pa.int64(),
    **PLAN_FIELDS,
}


def schema_for(frame: pd.DataFrame) -> pa.Schema:
    """The typed schema of a trials (or Pareto) frame's columns."""
    return pa.schema([(str(c), COLUMNS.get(str(c), pa.float64())) for c in frame.columns])


def to_arrow(frame: pd.DataFrame) -> pa.Table:
    """A trials frame as an Arrow table with :func:`schema_for`'s types."""
    return pa.Table.from_pandas(frame, schema=schema_for(frame), preserve_index=False)


def write_parquet(frame: pd.DataFrame, path) -> None:
    """Write a trials frame as Parquet with typed columns."""
    pq.write_table(to_arrow(frame), str(path))


def read_parquet(data: bytes) -> pd.DataFrame:
    """A trials frame from Parquet bytes: list and struct cells become lists and dicts,
    text columns hold ``str`` or None (as :meth:`DriverOutcome.trials_frame` builds them)."""
    frame = pq.read_table(io.BytesIO(data)).to_pandas()
    for column in ("fallback", "ignored_scope", "plan"):
        if column in frame:
            frame[column] = [_plain(v) for v in frame[column]]
    return text_as_objects(frame)


def text_as_objects(frame: pd.DataFrame) -> pd.DataFrame:
    """Text columns as Python ``str`` or None, whatever pandas infers (``str`` dtype with
    NaN for some, object for all-None columns), so a frame compares equal to its Parquet copy."""
    for name in frame.columns:
        if COLUMNS.get(str(name)) == pa.string():
            frame[name] = pd.Series(
                [None if v is None or (isinstance(v, float) and v != v) else v for v in frame[name]],
                dtype=object,
                index=frame.index,
            )
    return frame


def _plain(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def plan_of(row: Any) -> QuantPlan:
    """The :class:`~rayq.QuantPlan` of a trials row (its ``plan`` struct)."""
    return QuantPlan.from_dict(_plain(row["plan"]))


__all__ = [
    "COLUMNS",
    "PLAN",
    "SCOPE",
    "plan_of",
    "read_parquet",
    "schema_for",
    "text_as_objects",
    "to_arrow",
    "write_parquet",
]
