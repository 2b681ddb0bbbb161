"""In-graph statistics for ONNX: reduction nodes added as extra outputs.

Only the small reduced tensors ([B] or [B, C]) leave ONNX Runtime. Tensors whose
first dim is the model's batch dim are reduced per sample; tensors with a static
first dim, and tensors whose rank shape inference could not tell (``Loop`` outputs),
are reduced to a single value per batch (shape [1] / [1, C]). A first dim
that shape inference could not name (``unk__6`` after a Reshape, say) is kept in
the graph and checked at run time: equal to the batch size, it is the batch dim;
otherwise the rows are folded into one on the host. So per-sample statistics do not
depend on the calibration batch size.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from rayq.backends.base import StatRequest, StatRunner, StreamedStatRunner
from rayq.backends.onnx import reader
from rayq.backends.streams import plan as plan_streams
from rayq.errors import BackendError

_PREFIX = "rayq_stat::"


def output_name(tensor: str, reduction: str) -> str:
    return f"{_PREFIX}{tensor}::{reduction}"


class _Builder:
    """Appends reduction nodes to a graph, opset-aware."""

    def __init__(self, proto: onnx.ModelProto) -> None:
        self.proto = proto
        self.graph = proto.graph
        self.opset = reader.opset(proto)
        self.counter = 0

    def _name(self, base: str) -> str:
        self.counter += 1
        return f"rayq_stat_{self.counter}_{base}"

    def node(self, op: str, inputs: list[str], **attrs) -> str:
        out = self._name(op)
        self.graph.node.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def const(self, value: np.ndarray) -> str:
        name = self._name("const")
        self.graph.initializer.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def reduce(self, op: str, x: str, axes: list[int]) -> str:
        if not axes:
            return self.node("Identity", [x])
        axes_as_input = self.opset >= 18 or (op == "ReduceSum" and self.opset >= 13)
        if axes_as_input:
            return self.node(op, [x, self.const(np.array(axes, dtype=np.int64))], keepdims=0)
        return self.node(op, [x], axes=axes, keepdims=0)

    def output(self, tensor: str, name: str) -> None:
        self.graph.node.append(helper.make_node("Identity", [tensor], [name], name=self._name("out")))
        self.graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))


def instrument(
    proto: onnx.ModelProto, requests: Sequence[StatRequest]
) -> tuple[onnx.ModelProto, list[str], frozenset[str]]:
    """Return a copy of ``proto`` with reduction outputs, their names, and the tensors
    whose first dim is only known at run time to be the batch dim or not."""
    _, raw_shapes = reader.build_view(proto)
    batch_syms = reader.batch_symbols(proto)
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    b = _Builder(out)
    names: list[str] = []
    maybe: set[str] = set()
    for req in requests:
        dims = raw_shapes.get(req.tensor)
        if dims is None and any(r.startswith("ch_") for r in req.reductions):
            raise BackendError(f"cannot collect per-channel statistics for tensor {req.tensor!r}: its rank is unknown")
        rank = len(dims) if dims is not None else 0  # unknown rank (a Loop output): one value per batch
        batched = dims is not None and rank >= 1 and (dims[0] is None or isinstance(dims[0], str))
        if batched and dims is not None and dims[0] not in batch_syms:
            maybe.add(req.tensor)  # decided per run: see module docstring
        x = req.tensor if batched else b.node("Unsqueeze", [req.tensor, b.const(np.array([0], np.int64))])
        r = rank if batched else rank + 1
        if b.opset < 13:
            raise BackendError("instrumentation needs opset >= 13")
        ch = None
        if req.channel_axis is not None:
            ch = req.channel_axis % rank + (0 if batched else 1)
            if ch == 0:
                raise BackendError(f"channel axis of {req.tensor!r} cannot be the batch axis")
        for red in req.reductions:
            names.append(output_name(req.tensor, red))
            b.output(_reduction(b, x, r, red, ch, req.tensor), names[-1])
    del out.graph.value_info[:]
    return out, names, frozenset(maybe)


def _reduction(b: _Builder, x: str, rank: int, red: str, ch: int | None, tensor: str) -> str:
    if red == "raw":
        return x
    if red in ("min", "max"):
        op = "ReduceMin" if red == "min" else "ReduceMax"
        if rank >= 2:  # over every axis but the batch, in place (a Flatten would copy x)
            return b.reduce(op, x, list(range(1, rank)))
        return b.reduce(op, b.node("Flatten", [x], axis=1), [1])  # rank unknown (or 1)
    if ch is None:
        raise BackendError(f"reduction {red!r} of {tensor!r} needs a channel axis")
    axes = [i for i in range(1, rank) if i != ch]
    if red == "ch_mean":
        return b.reduce("ReduceMean", x, axes)
    if red == "ch_min":
        return b.reduce("ReduceMin", x, axes)
    if red == "ch_max":
        return b.reduce("ReduceMax", x, axes)
    if red == "ch_absmax":
        return b.reduce("ReduceMax", b.node("Abs", [x]), axes)
    raise BackendError(f"unknown reduction {red!r}")


def make_stat_runner(proto: onnx.ModelProto, requests: Sequence[StatRequest], *, num_threads: int = 0) -> StatRunner:
    """Instrument ``proto``, create one ONNX Runtime session, return the batch runner.

    The runner runs ``streams`` batches at once well (see :mod:`rayq.backends.streams`):
    one session, ``num_threads`` (0: every CPU) split into streams of fewer intra-op
    threads each, called from as many threads.

    The large weights are split off first (:func:`runtime.split_weights`), so the
    instrumented copy holds none of them; :func:`runtime.ort_session` hands them to
    ONNX Runtime (a model of several GB is held about twice during calibration, not
    four times).
    """
    from rayq.backends.onnx import runtime

    light, weight_names, weights = runtime.split_weights(proto, values=False)
    instrumented, names, maybe = instrument(light, requests)
    streams, threads = plan_streams(num_threads, reader.size_bytes(proto))
    session = runtime.ort_session(instrumented, num_threads=threads, weights=(weight_names, weights))
    specs = reader.input_specs(proto)
    keys = [(r.tensor, red) for r in requests for red in r.reductions]
    batched_inputs = [s.name for s in specs if s.shape]  # the first dim of the first one is the batch

    def run(feeds: dict[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
        values = runtime.run_session(session, specs, feeds, names)
        batch = next((np.shape(feeds[n])[0] for n in batched_inputs if n in feeds), None)
        result: dict[str, dict[str, np.ndarray]] = {}
        for (tensor, red), value in zip(keys, values):
            value = np.asarray(value, dtype=np.float32)
            if tensor in maybe and red != "raw" and value.shape[0] != batch:
                value = _fold_rows(value, red)
            result.setdefault(tensor, {})[red] = value
        return result

    # ONNX Runtime's run is thread-safe: batches on `streams` threads at once
    return StreamedStatRunner(run, streams)


def _fold_rows(value: np.ndarray, red: str) -> np.ndarray:
    """Rows of a tensor whose first dim turned out not to be the batch: one row."""
    if red in ("min", "ch_min"):
        return value.min(axis=0, keepdims=True)
    if red in ("max", "ch_max", "ch_absmax"):
        return value.max(axis=0, keepdims=True)
    return value.mean(axis=0, keepdims=True)  # ch_mean: rows are equal-sized slices
