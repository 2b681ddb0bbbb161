"""Writing a :class:`~rayq.core.recipe.Recipe` into an ONNX model as QDQ.

Activations: ``x -> QuantizeLinear -> DequantizeLinear -> consumers``; weights:
int8 initializer -> ``DequantizeLinear(axis)``; Conv/Gemm biases become int32
initializers with ``DequantizeLinear(scale = s_x * s_w)`` when both inputs are
quantized, which is what lets ONNX Runtime fuse the group into ``QLinearConv``.

From opset 21 on, signed 8-bit activation quantizers are written as uint8 with the zero
point moved by 128 (the same values): ONNX Runtime (1.32) cannot load an opset-21 model
whose int8 DequantizeLinear feeds a data-movement op (Transpose, Reshape, MaxPool,
Squeeze...): the Q/DQ it copies across that op gets ``output_dtype=INT8`` with a uint8 zero
point after its own s8->u8 conversion, and session creation fails.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import helper, numpy_helper

from rayq.backends.onnx import normalize
from rayq.core.params import QParams
from rayq.core.recipe import ActivationQuant, Recipe, WeightQuant
from rayq.errors import BackendError

_PASS_THROUGH = {"MaxPool", "Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze"}
#: Data-movement ops after which the quantized tensor is re-quantized (see ``requantize``).
_REQUANTIZE_AFTER = {"Flatten"}
#: First opset whose QuantizeLinear has ``output_dtype`` (see the module docstring).
_UINT8_ACTIVATIONS_FROM_OPSET = 21

log = logging.getLogger(__name__)


class _Writer:
    """A QDQ copy of ``proto`` being written. The initializers named in ``defer`` (the
    FP32 weights the recipe replaces with int8 ones) are not copied up front: only those
    still read by some node when the model is finished, so a model's FP32 and int8
    weights are not held twice over."""

    def __init__(self, proto: onnx.ModelProto, defer: frozenset[str] = frozenset()) -> None:
        self.source = proto
        self._ranks: dict[str, int] | None = None
        self.proto = onnx.ModelProto()
        normalize.copy_fields(proto, self.proto, skip="graph")
        self.graph = self.proto.graph
        normalize.copy_fields(proto.graph, self.graph, skip="initializer")
        self.deferred = {t.name: t for t in proto.graph.initializer if t.name in defer}
        self.graph.initializer.extend(t for t in proto.graph.initializer if t.name not in self.deferred)
        self.nodes = {n.name: n for n in self.graph.node}
        self.new_nodes: list[onnx.NodeProto] = []
        self.inits = {**{i.name: i for i in self.graph.initializer}, **self.deferred}
        self.dq_params: dict[str, QParams] = {}  # DQ output tensor -> params
        self.names: set[str] = normalize.all_names(self.graph)
        self.constant_nodes = {n.output[0]: n for n in self.graph.node if normalize.constant_value(n) is not None}
        self.opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)

    def unique(self, name: str) -> str:
        base, i = name, 1
        while name in self.names:
            name, i = f"{base}_{i}", i + 1
        self.names.add(name)
        return name

    def init(self, name: str, value: np.ndarray) -> str:
        name = self.unique(name)
        t = numpy_helper.from_array(np.asarray(value), name)
        self.graph.initializer.append(t)
        self.inits[name] = t
        return name

    def add(self, op: str, inputs: list[str], output: str, **attrs) -> str:
        output = self.unique(output)
        self.new_nodes.append(helper.make_node(op, inputs, [output], name=output, **attrs))
        return output

    def set_input(self, node: str, index: int, tensor: str) -> None:
        if node not in self.nodes:
            raise BackendError(f"recipe refers to unknown node {node!r}")
        self.nodes[node].input[index] = tensor

    def activation(self, a: ActivationQuant) -> None:
        src = a.tensor
        if a.smooth is not None:
            factor = self.init(f"{a.tensor}/rayq_smooth", a.smooth.astype(np.float32))
            src = self.add("Mul", [a.tensor, factor], f"{a.tensor}/rayq_smoothed")
        p = a.params
        scale = self.init(f"{src}/rayq_scale", np.asarray(p.scale, np.float32).reshape(()))
        zp = self.init(f"{src}/rayq_zp", _activation_zero_point(p, self.opset))
        q = self.add("QuantizeLinear", [src, scale, zp], f"{src}/rayq_q")
        dq = self.add("DequantizeLinear", [q, scale, zp], f"{src}/rayq_dq")
        self.dq_params[dq] = p
        for e in a.edges:
            self.set_input(e.node, e.index, dq)
            if self.nodes[e.node].op_type in _REQUANTIZE_AFTER:
                self.requantize(self.nodes[e.node].output[0], scale, zp, p)

    def requantize(self, tensor: str, scale: str, zp: str, p: QParams) -> None:
        """Q/DQ again, with the same parameters, after a data-movement op that ONNX
        Runtime does not move DequantizeLinear through (Flatten): lossless, since the
        values are already on the grid, and it lets the consumer fuse (e.g. QGemm)."""
        q = self.add("QuantizeLinear", [tensor, scale, zp], f"{tensor}/rayq_rq")
        dq = self.add("DequantizeLinear", [q, scale, zp], f"{tensor}/rayq_rdq")
        self.dq_params[dq] = p
        for node in self.graph.node:
            for i, name in enumerate(node.input):
                if name == tensor:
                    node.input[i] = dq

    def weight(self, w: WeightQuant) -> None:
        p = w.params
        base = f"{w.node}/rayq_w"
        q = self.init(f"{base}_q", w.values.astype(np.int8))
        scale = self.init(f"{base}_scale", np.asarray(p.scale, np.float32))
        zp = self.init(f"{base}_zp", np.asarray(p.zero_point, np.int8))
        attrs = {"axis": int(p.axis)} if p.axis is not None and np.ndim(p.scale) == 1 else {}
        dq = self.add("DequantizeLinear", [q, scale, zp], f"{base}_dq", **attrs)
        self.dq_params[dq] = p
        self.set_input(w.node, w.edge.index, dq)

    def bias(self, node_name: str, value: np.ndarray) -> None:
        """Replace the constant bias of ``node_name`` (its bias input, or the constant of
        the Add after a MatMul) with ``value``. Only that node's reference changes, so a
        bias shared with other nodes keeps its value for them. A bias that is not a
        constant (computed in the graph) is left as it is."""
        node = self.nodes[node_name]
        if node.op_type in ("Conv", "Gemm", "ConvTranspose") and len(node.input) > 2 and node.input[2]:
            target, index = node, 2
        else:  # MatMul + Add(bias)
            add = next((a for a in self.graph.node if a.op_type == "Add" and node.output[0] in a.input), None)
            if add is None or len(add.input) != 2:
                log.warning("bias correction of %r skipped: no bias found", node_name)
                return
            target, index = add, 1 - list(add.input).index(node.output[0])
        old = self.constant_dims(target.input[index])
        if old is None or int(np.prod(old)) != value.size:
            log.warning(
                "bias correction of %r skipped: its bias %r is not a constant of %d values",
                node_name,
                target.input[index],
                value.size,
            )
            return
        target.input[index] = self.init(f"{node_name}/rayq_bias", value.astype(np.float32).reshape(old))

    def constant_dims(self, tensor: str) -> tuple[int, ...] | None:
        """Shape of ``tensor`` if it is an initializer or a ``Constant`` node's output."""
        if tensor in self.inits:
            return tuple(self.inits[tensor].dims)
        if tensor in self.constant_nodes:
            return tuple(normalize.constant_value(self.constant_nodes[tensor]).dims)  # type: ignore[union-attr]
        return None

    def _upstream_dq(self, tensor: str, producers: dict[str, onnx.NodeProto]) -> QParams | None:
        """Params of the DQ that feeds ``tensor`` through data-movement ops, or through a
        Concat whose inputs all share one scale (the unified-scale case)."""
        while tensor not in self.dq_params:
            node = producers.get(tensor)
            if node is None:
                return None
            if node.op_type == "Concat":
                params = [self._upstream_dq(t, producers) for t in node.input]
                first = params[0] if params else None
                if first is not None and all(p is not None and _same(p, first) for p in params):
                    return params[0]
                return None
            if node.op_type not in _PASS_THROUGH:
                return None
            tensor = node.input[0]
        return self.dq_params[tensor]

    def rank(self, tensor: str, producers: dict[str, onnx.NodeProto]) -> int | None:
        """Rank of ``tensor`` (or of the tensor it quantizes) from shape inference on the
        input model; None if unknown."""
        if self._ranks is None:
            from rayq.backends.onnx import reader

            inferred = reader.infer(self.source)
            self._ranks = {
                vi.name: len(vi.type.tensor_type.shape.dim)
                for vi in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]
                if vi.type.tensor_type.HasField("shape")
            }
        while (
            tensor not in self._ranks
            and tensor in producers
            and producers[tensor].op_type in ("QuantizeLinear", "DequantizeLinear", "Mul")
        ):
            tensor = producers[tensor].input[0]  # back through our Q/DQ (and SmoothQuant Mul)
        return self._ranks.get(tensor)

    def int32_biases(self) -> None:
        """Quantize Conv/Gemm biases, and the constant of a MatMul's bias Add, to int32
        where input and weight are quantized: ONNX Runtime only fuses the group into an
        integer kernel (QLinearConv, QGemm) with an int32 bias."""
        producers = {o: n for n in [*self.graph.node, *self.new_nodes] for o in n.output}
        consumers: dict[str, list[onnx.NodeProto]] = {}
        for n in self.graph.node:
            for t in set(n.input):
                consumers.setdefault(t, []).append(n)
        for node in self.graph.node:
            if node.op_type in ("Conv", "Gemm") and len(node.input) > 2 and node.input[2] in self.inits:
                target, index = node, 2
            elif (
                node.op_type == "MatMul"
                and len(consumers.get(node.output[0], ())) == 1
                and (self.rank(node.input[0], producers) or 0) >= 2
            ):  # ORT fuses MatMul+Add to (Q)Gemm,
                # an N-D one too (reshaped to 2-D): with a float bias it stays an FP32 Gemm
                target = consumers[node.output[0]][0]
                others = [i for i, t in enumerate(target.input) if t != node.output[0]]
                if target.op_type != "Add" or len(target.input) != 2 or len(others) != 1:
                    continue
                index = others[0]
                if target.input[index] not in self.inits:
                    continue
            else:
                continue
            wp = self.dq_params.get(node.input[1])
            xp = self._upstream_dq(node.input[0], producers)
            if wp is None or xp is None:
                continue
            bias = numpy_helper.to_array(self.inits[target.input[index]]).astype(np.float64)
            scale = (np.float64(xp.scale) * np.asarray(wp.scale, np.float64)).reshape(-1)
            if scale.size not in (1, bias.size) or bias.ndim != 1:
                continue
            scale = np.broadcast_to(scale, bias.shape)
            q = np.clip(np.rint(bias / scale), -(2**31), 2**31 - 1).astype(np.int32)
            base = f"{node.name}/rayq_bias32"
            q_name = self.init(f"{base}_q", q)
            s_name = self.init(f"{base}_scale", scale.astype(np.float32))
            z_name = self.init(f"{base}_zp", np.zeros(bias.shape, np.int32))
            target.input[index] = self.add("DequantizeLinear", [q_name, s_name, z_name], f"{base}_dq", axis=0)

    def finish(self) -> onnx.ModelProto:
        used = {t for n in [*self.graph.node, *self.new_nodes] for t in normalize.references(n)}
        inits = self.graph.initializer
        inits.extend(t for name, t in self.deferred.items() if name in used)  # an FP32 weight still read
        for i in reversed([i for i, t in enumerate(inits) if t.name not in used]):
            del inits[i]  # in place: re-adding the kept ones would copy every weight again
        ordered = _toposort([*self.graph.node, *self.new_nodes], self.graph)
        del self.graph.node[:]
        self.graph.node.extend(ordered)
        return self.proto


def _activation_zero_point(p: QParams, opset: int) -> np.ndarray:
    """The stored zero point of an activation quantizer: int8 becomes uint8 + 128 from
    opset 21 on (the module docstring says why); ``DequantizeLinear`` gives the same values."""
    zp = np.asarray(p.zero_point).reshape(())
    if np.dtype(p.dtype) == np.int8 and opset >= _UINT8_ACTIVATIONS_FROM_OPSET:
        return np.asarray(zp.astype(np.int16) + 128, np.uint8)
    return np.asarray(zp, p.dtype)


def _same(a: QParams, b: QParams) -> bool:
    return a.dtype == b.dtype and np.array_equal(a.scale, b.scale) and np.array_equal(a.zero_point, b.zero_point)


def _toposort(nodes: list[onnx.NodeProto], graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    producers: dict[str, int] = {o: i for i, n in enumerate(nodes) for o in n.output}
    reads = [normalize.references(n) if normalize.has_subgraph(n) else n.input for n in nodes]
    done: set[int] = set()
    order: list[onnx.NodeProto] = []

    def visit(i: int) -> None:
        stack = [(i, False)]
        while stack:
            j, expanded = stack.pop()
            if j in done:
                continue
            if expanded:
                done.add(j)
                order.append(nodes[j])
                continue
            stack.append((j, True))
            for t in reads[j]:
                if t not in available and t in producers and producers[t] not in done:
                    stack.append((producers[t], False))

    for i in range(len(nodes)):
        visit(i)
    return order


def apply_recipe(proto: onnx.ModelProto, recipe: Recipe) -> onnx.ModelProto:
    """Return a QDQ copy of ``proto`` with ``recipe`` applied."""
    w = _Writer(proto, defer=frozenset(wq.tensor for wq in recipe.weights))
    for node, value in recipe.biases.items():
        w.bias(node, value)
    for a in recipe.activations:
        w.activation(a)
    for wq in recipe.weights:
        w.weight(wq)
    w.int32_biases()
    out = w.finish()
    opsets = [o for o in out.opset_import if o.domain in ("", "ai.onnx")]
    if opsets and opsets[0].version < 13:
        raise BackendError("QDQ with per-channel weights needs opset >= 13")
    return out
