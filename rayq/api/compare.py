"""Validate and time models side by side: FP32 vs INT8 on every runtime of a backend (the
user's metric and the latency of one batch), as ``rayq quantize --validation`` reports it.

Example:
    >>> items = load_items("examples/digits/validation.npz")                          # doctest: +SKIP
    >>> rows = compare(backend, {"FP32": fp32, "INT8": int8}, accuracy, items,
    ...                latency_feeds(backend, fp32, items))                           # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rayq.backends.base import Backend
from rayq.errors import DataError
from rayq.pipeline import data as data_mod
from rayq.pipeline.latency import Latency, measure_latency
from rayq.pipeline.validation import run_validation, validation_model

log = logging.getLogger("rayq")


@dataclass(frozen=True)
class Row:
    """One model on one runtime."""

    runtime: str
    label: str
    metric: float
    latency: Latency


def load_items(path: str) -> list[Any]:
    """Validation items as a validation function receives them (NNCF: the dataset's items)."""
    items = list(data_mod.as_dataset(path).get_inference_data())
    if not items:
        raise DataError(f"validation data {path!r} is empty")
    return items


def latency_feeds(backend: Backend, model: Any, items: Sequence[Any], batch: int = 1) -> dict:
    """One input batch of the first ``batch`` validation items, checked against the model's inputs."""
    from rayq.backends.feeds import check_feeds

    specs = backend.inputs(model)
    try:
        feeds = [data_mod.to_feeds(item, specs) for item in items[: max(1, batch)]]
        if len(feeds) > 1:
            data_mod.batch_size_for(feeds, specs, len(feeds))  # DataError for a static batch dim
            feeds = data_mod.batches(feeds, specs, len(feeds))
        return check_feeds(specs, feeds[0])
    except DataError as exc:
        raise DataError(f"validation data does not fit the model (latency_batch={batch}): {exc}") from exc


def compare(
    backend: Backend,
    models: Mapping[str, Any],
    fn: Callable,
    items: Sequence[Any],
    feeds: dict,
    *,
    threads: int = 2,
    runtimes: Sequence[str] | None = None,
    repeats: int = 50,
) -> list[Row]:
    """Validate and time each of ``models`` (label -> model) on each runtime.

    Example:
        >>> rows = compare(get_backend("onnx"), {"FP32": fp32, "INT8": int8}, accuracy,
        ...                items, feeds, threads=2)                                  # doctest: +SKIP
        >>> rows[0].runtime, rows[0].label                                           # doctest: +SKIP
        ('onnxruntime', 'FP32')
    """
    rows = []
    for runtime in runtimes or backend.runtimes:
        for label, model in models.items():
            log.info("validating %s on %s", label, runtime)
            compiled = validation_model(backend, model, runtime=runtime, threads=threads)
            metric = run_validation(fn, compiled, items)
            latency = measure_latency(backend, model, feeds, runtime=runtime, threads=threads, repeats=repeats)
            rows.append(Row(runtime, label, metric.value, latency))
    return rows
