"""In-graph statistics for OpenVINO: reduction ops added as extra ``Result`` nodes.

Only the reduced tensors ([B] or [B, C]) leave the runtime. A tensor whose first dim
is the batch dim of the model inputs (dynamic, or the inputs' static batch size) is
reduced per sample; any other tensor is treated as one sample (shape [1] / [1, C]).
The instrumented model keeps only the statistics outputs, so the parts of the graph
that no statistic needs are not computed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import openvino as ov
import openvino.opset13 as ops

from rayq.backends.base import REDUCTIONS, StatRequest, StatRunner, StreamedStatRunner
from rayq.backends.feeds import check_feeds
from rayq.backends.openvino import reader, runtime
from rayq.errors import BackendError


def _batch_dims(model: ov.Model) -> tuple[bool, set[int]]:
    """(some input has a dynamic first dim, the static first dims of the inputs)."""
    dynamic, static = False, set()
    for param in model.get_parameters():
        shape = reader.shape_of(param.output(0))
        if shape:
            if shape[0] is None:
                dynamic = True
            else:
                static.add(shape[0])
    return dynamic, static


def _is_batched(shape: tuple[int | None, ...], dynamic: bool, static: set[int]) -> bool:
    if not shape:
        return False
    return shape[0] is None if dynamic else shape[0] in static


def _axes(values: list[int]) -> Any:
    return ops.constant(np.array(values, dtype=np.int64))


def _reduce(kind: str, x: Any, axes: list[int], name: str) -> Any:
    if not axes:
        return x
    fn = {"min": ops.reduce_min, "max": ops.reduce_max, "mean": ops.reduce_mean}[kind]
    return fn(x, _axes(axes), False, name=name).output(0)


def _reduction(x: Any, rank: int, red: str, ch: int | None, tensor: str) -> Any:
    name = f"rayq_stat/{tensor}/{red}"
    if red == "raw":
        return x
    if red in ("min", "max"):
        return _reduce(red, x, list(range(1, rank)), name)
    if ch is None:
        raise BackendError(f"reduction {red!r} of {tensor!r} needs a channel axis")
    axes = [i for i in range(1, rank) if i != ch]
    if red == "ch_absmax":
        return _reduce("max", ops.abs(x).output(0), axes, name)
    return _reduce(red[3:], x, axes, name)


def instrument(model: ov.Model, requests: Sequence[StatRequest]) -> tuple[ov.Model, list[tuple[str, str]]]:
    """A copy of ``model`` whose outputs are the requested reductions, and their keys.

    Raises:
        BackendError: unknown tensor or reduction, dynamic rank, or a channel axis that
            is the batch axis.
    """
    clone, idx = reader.cloned(model)
    dynamic, static = _batch_dims(clone)
    results, keys = [], []
    for req in requests:
        port = idx.port(req.tensor)
        shape = reader.shape_of(port)
        if shape is None:
            raise BackendError(f"cannot collect statistics for {req.tensor!r}: its rank is unknown")
        x = port
        if port.get_element_type() != ov.Type.f32:
            x = ops.convert(x, ov.Type.f32).output(0)
        rank = len(shape)
        if not _is_batched(shape, dynamic, static):
            x = ops.unsqueeze(x, _axes([0])).output(0)
            rank += 1
        ch = None
        if req.channel_axis is not None:
            if not -len(shape) <= req.channel_axis < len(shape):
                raise BackendError(
                    f"channel axis {req.channel_axis} is out of range for {req.tensor!r} of rank {len(shape)}"
                )
            ch = req.channel_axis % len(shape) + (rank - len(shape))
            if ch == 0:
                raise BackendError(f"channel axis of {req.tensor!r} cannot be the batch axis")
        for red in req.reductions:
            if red not in REDUCTIONS:
                raise BackendError(f"unknown reduction {red!r}; expected one of {REDUCTIONS}")
            out = _reduction(x, rank, red, ch, req.tensor)
            results.append(ops.result(out, name=f"rayq_stat/{req.tensor}/{red}/result"))
            keys.append((req.tensor, red))
    if clone.get_sinks():  # stateful models: keep the original outputs and their Assigns
        clone.add_results(results)
        return clone, keys
    return ov.Model(results, clone.get_parameters(), "rayq_stats"), keys


def make_stat_runner(model: ov.Model, requests: Sequence[StatRequest], *, num_threads: int = 0) -> StatRunner:
    """Instrument ``model``, compile it once on CPU, and return the batch runner.

    Except with ``num_threads=1``, the model is compiled for throughput and the runner
    is thread-safe, running up to ``run.streams`` batches at once (one per infer request).

    Example:
        >>> run = make_stat_runner(model, [StatRequest("relu_0", ("min", "max"))])  # doctest: +SKIP
        >>> run({"input": x})["relu_0"]["max"].shape                                  # doctest: +SKIP
        (4,)
    """
    specs = reader.input_specs(model)
    instrumented, keys = instrument(model, requests)
    if not keys:

        def run_nothing(feeds: dict[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
            check_feeds(specs, feeds)
            return {}

        return run_nothing
    # one thread: one request, as before; else a throughput pass over several requests
    # (not for stateful models: their state lives in the request and must see every batch)
    pipelined = num_threads != 1 and not model.get_sinks()
    compiled = runtime.compile_model(instrumented, device="CPU", num_threads=num_threads, throughput=pipelined)
    session = runtime.RequestPool(compiled, specs) if pipelined else runtime.Session(compiled, specs)
    first = len(compiled.outputs) - len(keys)
    wanted = list(range(first, len(compiled.outputs)))

    def run(feeds: dict[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
        values = session.run(feeds, wanted)
        result: dict[str, dict[str, np.ndarray]] = {}
        for (tensor, red), value in zip(keys, values):
            result.setdefault(tensor, {})[red] = np.asarray(value, dtype=np.float32)
        return result

    return StreamedStatRunner(run, session.streams if isinstance(session, runtime.RequestPool) else 1)
