"""Scale / zero-point math for INT8 quantizers (numpy only).

Conventions (the ONNX QuantizeLinear contract, also used for FakeQuantize):
``q = clip(round(x / scale) + zero_point, qmin, qmax)``, ``x' = (q - zero_point) * scale``.

- Weights: int8, symmetric (zero point 0), per output channel, narrow range
  ``[-127, 127]`` -- or ``[-63, 63]`` with the overflow fix (7-bit weights avoid
  saturating the u8*s8 pair sums of AVX2/AVX-512 CPUs without VNNI).
- Activations, symmetric (``performance``): uint8 with zero point 0 when the range
  is non-negative (after ReLU), else int8 with zero point 0.
- Activations, asymmetric (``mixed``): uint8 with a zero point that makes 0 exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_MIN_SCALE = np.float32(1e-12)


@dataclass(frozen=True)
class QParams:
    """Parameters of one quantizer.

    Attributes:
        scale: float32 scalar or per-channel vector.
        zero_point: Integer array of the same shape as ``scale``.
        dtype: ``"int8"`` or ``"uint8"``.
        qmin: Lowest integer level used.
        qmax: Highest integer level used.
        axis: Channel axis for per-channel parameters, else None.
    """

    scale: np.ndarray
    zero_point: np.ndarray
    dtype: str
    qmin: int
    qmax: int
    axis: int | None = None

    @property
    def levels(self) -> int:
        return self.qmax - self.qmin + 1

    def range(self) -> tuple[np.ndarray, np.ndarray]:
        """The real-valued (low, high) that the integer range represents."""
        zp = self.zero_point.astype(np.float32)
        return (self.qmin - zp) * self.scale, (self.qmax - zp) * self.scale


def activation_params(lo: float, hi: float, *, symmetric: bool) -> QParams:
    """Per-tensor activation quantizer for the range ``[lo, hi]``.

    Example:
        >>> p = activation_params(0.0, 6.0, symmetric=True)
        >>> p.dtype, round(float(p.scale), 6), int(p.zero_point)
        ('uint8', 0.023529, 0)
    """
    lo, hi = float(min(lo, 0.0)), float(max(hi, 0.0))
    if symmetric:
        if lo >= 0.0:
            scale = max(hi / 255.0, float(_MIN_SCALE))
            return QParams(np.float32(scale), np.uint8(0), "uint8", 0, 255)  # type: ignore[arg-type]  # numpy scalars
        absmax = max(-lo, hi)
        scale = max(absmax / 127.0, float(_MIN_SCALE))
        return QParams(np.float32(scale), np.int8(0), "int8", -128, 127)  # type: ignore[arg-type]  # numpy scalars
    scale = max((hi - lo) / 255.0, float(_MIN_SCALE))
    zp = int(np.clip(np.round(-lo / scale), 0, 255))
    return QParams(np.float32(scale), np.uint8(zp), "uint8", 0, 255)  # type: ignore[arg-type]  # numpy scalars


def weight_params(w: np.ndarray, axis: int | None, *, bits: int = 8) -> QParams:
    """Symmetric int8 parameters for weight ``w`` (per channel along ``axis``).

    Args:
        w: The float weight.
        axis: Output-channel axis, or None for per-tensor.
        bits: 8, or 7 for the overflow fix.
    """
    qmax = 2 ** (bits - 1) - 1
    w = np.asarray(w, dtype=np.float32)
    if axis is None:
        absmax = np.asarray(np.max(np.abs(w)), dtype=np.float32)
    else:
        reduce_axes = tuple(i for i in range(w.ndim) if i != axis % w.ndim)
        absmax = np.max(np.abs(w), axis=reduce_axes).astype(np.float32)
    scale = np.where(absmax > 0, absmax / np.float32(qmax), np.float32(1.0)).astype(np.float32)
    zp = np.zeros(scale.shape, dtype=np.int8)
    return QParams(scale, zp, "int8", -qmax, qmax, None if axis is None else axis % w.ndim)


def _broadcast(p: QParams, ndim: int) -> tuple[np.ndarray, np.ndarray]:
    scale = np.asarray(p.scale, dtype=np.float32)
    zp = np.asarray(p.zero_point, dtype=np.float32)
    if p.axis is not None and scale.ndim == 1:
        shape = [1] * ndim
        shape[p.axis] = scale.shape[0]
        scale, zp = scale.reshape(shape), zp.reshape(shape)
    return scale, zp


def quantize(x: np.ndarray, p: QParams) -> np.ndarray:
    """Quantize ``x`` to integers of ``p.dtype`` (round half to even, like ONNX)."""
    scale, zp = _broadcast(p, np.ndim(x))
    q = np.clip(np.rint(np.asarray(x, dtype=np.float32) / scale) + zp, p.qmin, p.qmax)
    return q.astype(p.dtype)


def dequantize(q: np.ndarray, p: QParams) -> np.ndarray:
    scale, zp = _broadcast(p, np.ndim(q))
    return ((q.astype(np.float32) - zp) * scale).astype(np.float32)


def fake_quantize(x: np.ndarray, p: QParams) -> np.ndarray:
    """``dequantize(quantize(x))``: the value the quantized model sees."""
    return dequantize(quantize(x, p), p)
