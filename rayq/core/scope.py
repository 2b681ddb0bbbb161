"""Ignored scopes: which nodes stay in FP32 whatever the preset says."""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

from rayq.core.graph import GraphView
from rayq.errors import ConfigError


@dataclass(frozen=True)
class Subgraph:
    """Nodes on every path from ``inputs`` to ``outputs`` (node names, inclusive)."""

    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()


@dataclass(frozen=True)
class IgnoredScope:
    """Nodes excluded from quantization, with ``nncf.IgnoredScope`` semantics.

    Args:
        names: Exact node names.
        patterns: Regular expressions matched (``re.fullmatch``) against node names.
        types: Op types (the backend's op type, e.g. ``"Softmax"``).
        subgraphs: :class:`Subgraph` regions.
        validate: When True (default), a rule that matches nothing is an error.

    Example:
        >>> IgnoredScope(names=("/fc/Gemm",), types=("Softmax",))
        IgnoredScope(names=('/fc/Gemm',), patterns=(), types=('Softmax',), subgraphs=(), validate=True)
    """

    names: tuple[str, ...] = ()
    patterns: tuple[str, ...] = ()
    types: tuple[str, ...] = ()
    subgraphs: tuple[Subgraph, ...] = ()
    validate: bool = True

    def __post_init__(self) -> None:
        for attr in ("names", "patterns", "types"):
            value = getattr(self, attr)
            if isinstance(value, str):
                value = (value,)
            object.__setattr__(self, attr, tuple(value))
        subs = tuple(_subgraph(s) for s in self.subgraphs)
        object.__setattr__(self, "subgraphs", subs)
        for p in self.patterns:
            try:
                re.compile(p)
            except re.error as exc:
                raise ConfigError(f"ignored_scope pattern {p!r} is not a valid regular expression: {exc}") from exc

    def to_dict(self) -> dict:
        return {
            "names": list(self.names),
            "patterns": list(self.patterns),
            "types": list(self.types),
            "subgraphs": [{"inputs": list(s.inputs), "outputs": list(s.outputs)} for s in self.subgraphs],
            "validate": self.validate,
        }

    @classmethod
    def from_dict(cls, data: dict | None) -> IgnoredScope:
        data = dict(data or {})
        unknown = set(data) - {"names", "patterns", "types", "subgraphs", "validate"}
        if unknown:
            raise ConfigError(f"unknown ignored_scope field(s): {sorted(unknown)}")
        return cls(
            names=tuple(data.get("names", ())),
            patterns=tuple(data.get("patterns", ())),
            types=tuple(data.get("types", ())),
            subgraphs=tuple(data.get("subgraphs", ())),
            validate=bool(data.get("validate", True)),
        )


def _subgraph(sub) -> Subgraph:
    """A :class:`Subgraph` from itself, a mapping, or an object with ``inputs``/``outputs`` (NNCF's)."""
    if isinstance(sub, Subgraph):
        return sub
    try:
        inputs, outputs = (sub["inputs"], sub["outputs"]) if isinstance(sub, dict) else (sub.inputs, sub.outputs)
    except (KeyError, AttributeError) as exc:
        raise ConfigError(f"ignored_scope subgraph {sub!r} needs 'inputs' and 'outputs'") from exc
    return Subgraph(tuple(inputs), tuple(outputs))


def _close(name: str, candidates: list[str]) -> str:
    near = difflib.get_close_matches(name, candidates, n=5, cutoff=0.3)
    return f"; close names: {near}" if near else ""


def resolve_ignored(scope: IgnoredScope, graph: GraphView) -> frozenset[str]:
    """Return the node names matched by ``scope``.

    Raises:
        ConfigError: if ``scope.validate`` and a rule matches nothing (the message
            lists the closest node names).
    """
    names = graph.node_names()
    known = set(names)
    matched: set[str] = set()
    for name in scope.names:
        if name in known:
            matched.add(name)
        elif scope.validate:
            raise ConfigError(f"ignored_scope name {name!r} matches no node{_close(name, names)}")
    for pattern in scope.patterns:
        hits = {n for n in names if re.fullmatch(pattern, n)}
        if not hits and scope.validate:
            raise ConfigError(f"ignored_scope pattern {pattern!r} matches no node{_close(pattern, names)}")
        matched |= hits
    op_types = sorted({n.op_type for n in graph.nodes})
    for op_type in scope.types:
        hits = {n.name for n in graph.nodes if n.op_type == op_type}
        if not hits and scope.validate:
            raise ConfigError(f"ignored_scope type {op_type!r} matches no node; types in the model: {op_types}")
        matched |= hits
    for sub in scope.subgraphs:
        matched |= _subgraph_nodes(sub, graph, scope.validate)
    return frozenset(matched)


def _subgraph_nodes(sub: Subgraph, graph: GraphView, validate: bool) -> set[str]:
    names = graph.node_names()
    for n in (*sub.inputs, *sub.outputs):
        if not graph.has_node(n):
            raise ConfigError(f"ignored_scope subgraph node {n!r} matches no node{_close(n, names)}")
    forward = _reach(graph, set(sub.inputs), downstream=True)
    backward = _reach(graph, set(sub.outputs), downstream=False)
    nodes = forward & backward
    if not nodes and validate:
        raise ConfigError(f"ignored_scope subgraph {sub} contains no path from its inputs to its outputs")
    return nodes


def _reach(graph: GraphView, start: set[str], *, downstream: bool) -> set[str]:
    seen = set(start)
    stack = list(start)
    while stack:
        node = graph.node(stack.pop())
        if downstream:
            nxt = [c.name for t in node.outputs for c, _ in graph.consumers(t)]
        else:
            nxt = [p.name for t in node.inputs if t and (p := graph.producer(t)) is not None]
        for n in nxt:
            if n not in seen:
                seen.add(n)
                stack.append(n)
    return seen
