"""NNCF's option names as string enums: ``rayq.QuantizationPreset.MIXED == "mixed"``.

Every member *is* its string value (``class X(str, Enum)``), so code written for
NNCF (``nncf.DropType.ABSOLUTE``) and plain strings (``"absolute"``) work alike
everywhere rayq takes the option, and a plan or config holding either serialises
to the same JSON. :func:`plain` turns a member (rayq's, NNCF's or any other
string enum) back into the plain string rayq stores.

Example:
    >>> DropType.RELATIVE == "relative", f"{QuantizationPreset.MIXED}", plain(TargetDevice.CPU_SPR)
    (True, 'mixed', 'CPU_SPR')
"""

from __future__ import annotations

from enum import Enum
from typing import Any


class _StrEnum(str, Enum):
    """A string enum that prints and formats as its value (like ``enum.StrEnum``)."""

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)


class QuantizationPreset(_StrEnum):
    """``PERFORMANCE``: symmetric activations; ``MIXED``: asymmetric activations.

    Weights are symmetric in both, as in NNCF.
    """

    PERFORMANCE = "performance"
    MIXED = "mixed"


class ModelType(_StrEnum):
    """``TRANSFORMER``: transformer placement rules and SmoothQuant."""

    TRANSFORMER = "transformer"


class TargetDevice(_StrEnum):
    """The device the quantized model is for (see :func:`rayq.quantize` for what each changes)."""

    ANY = "ANY"
    CPU = "CPU"
    GPU = "GPU"
    NPU = "NPU"
    CPU_SPR = "CPU_SPR"


class DropType(_StrEnum):
    """``ABSOLUTE``: ``fp32 - int8``; ``RELATIVE``: ``(fp32 - int8) / |fp32|``."""

    ABSOLUTE = "absolute"
    RELATIVE = "relative"


class OverflowFix(_StrEnum):
    """7-bit weights where 8-bit ones would saturate AVX2/AVX-512 (non-VNNI) INT8 kernels.

    ``ENABLE``: every Conv/MatMul weight; ``FIRST_LAYER``: the weighted ops that read
    the model inputs; ``DISABLE``: full 8-bit weights everywhere. NNCF's string for
    ``FIRST_LAYER`` (``"first_layer_only"``) is accepted too.
    """

    ENABLE = "enable"
    FIRST_LAYER = "first_layer"
    DISABLE = "disable"


class QuantizationMode(_StrEnum):
    """Quantization number format.

    rayq quantizes to INT8 only: ``INT8`` (the same as ``mode=None``, NNCF's default).
    NNCF's ``FP8_E4M3`` / ``FP8_E5M2`` exist so that code naming them resolves, and are
    rejected with a :class:`rayq.ConfigError` when passed as ``mode``.
    """

    INT8 = "int8"
    FP8_E4M3 = "fp8_e4m3"
    FP8_E5M2 = "fp8_e5m2"


#: Aliases: NNCF's spelling -> rayq's.
_ALIASES = {"first_layer_only": "first_layer"}


def plain(value: Any) -> Any:
    """The plain value of an enum member (rayq's, NNCF's or any ``Enum``); others unchanged.

    Example:
        >>> plain(OverflowFix.DISABLE), plain("first_layer_only"), plain(None)
        ('disable', 'first_layer', None)
    """
    if isinstance(value, Enum):
        value = value.value
    if isinstance(value, str):
        return _ALIASES.get(value, str(value))
    return value
