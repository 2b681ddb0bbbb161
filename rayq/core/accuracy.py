"""Accuracy-drop math: how far a quantized model's metric fell from FP32.

Metrics are "higher is better". The drop is positive when the quantized model
is worse, so a budget reads ``drop <= max_drop``.

Example:
    >>> d = compute_drop(0.80, 0.79, "absolute")
    >>> round(d, 6), within_budget(d, 0.01)
    (0.01, True)
"""

from __future__ import annotations

import logging
import math

from rayq.errors import ConfigError

logger = logging.getLogger(__name__)

DROP_TYPES = ("absolute", "relative")
BUDGET_TOLERANCE = 1e-12


def check_drop_type(drop_type: str) -> str:
    """Validate a drop type and return it.

    Args:
        drop_type: ``"absolute"`` or ``"relative"`` (or a ``DropType`` member).

    Returns:
        The plain string.

    Raises:
        ConfigError: When ``drop_type`` is not one of :data:`DROP_TYPES`.

    Example:
        >>> check_drop_type("relative")
        'relative'
    """
    drop_type = getattr(drop_type, "value", drop_type)  # a DropType member (rayq's or NNCF's)
    if drop_type not in DROP_TYPES:
        raise ConfigError(f"drop_type={drop_type!r} is not valid; choose one of {list(DROP_TYPES)}")
    return str(drop_type)


def compute_drop(fp32: float, value: float, drop_type: str = "absolute") -> float:
    """The accuracy drop of ``value`` relative to the FP32 metric ``fp32``.

    ``absolute``: ``fp32 - value``. ``relative``: ``(fp32 - value) / |fp32|``
    (dividing by the magnitude keeps "worse than FP32" positive for metrics
    that are negative, such as a negated loss; for positive ``fp32`` this is
    exactly ``(fp32 - value) / fp32``).

    Args:
        fp32: Metric of the FP32 model.
        value: Metric of the candidate model.
        drop_type: ``"absolute"`` or ``"relative"``.

    Returns:
        The drop (negative when the candidate is better than FP32); NaN when
        ``value`` is NaN.

    Raises:
        ConfigError: Unknown ``drop_type``, a non-finite ``fp32``, or
            ``fp32 == 0`` with a relative drop.

    Example:
        >>> compute_drop(0.5, 0.45, "relative")
        0.09999999999999998
    """
    check_drop_type(drop_type)
    if not math.isfinite(fp32):
        raise ConfigError(f"the FP32 metric must be finite, got {fp32!r}")
    diff = float(fp32) - float(value)
    if drop_type == "absolute":
        return diff
    if fp32 == 0:
        raise ConfigError("a relative accuracy drop is undefined when the FP32 metric is 0; use drop_type='absolute'")
    return diff / abs(float(fp32))


def within_budget(drop: float | None, max_drop: float) -> bool:
    """Whether a drop meets the budget ``drop <= max_drop`` (tolerance 1e-12).

    Args:
        drop: The drop; None or NaN (a failed evaluation) is never within budget.
        max_drop: The largest acceptable drop (>= 0).

    Returns:
        True when the drop is within budget.

    Raises:
        ConfigError: When ``max_drop`` is negative or not finite.

    Example:
        >>> within_budget(0.01 + 1e-15, 0.01), within_budget(float("nan"), 0.01)
        (True, False)
    """
    if not math.isfinite(max_drop) or max_drop < 0:
        raise ConfigError(f"max_drop={max_drop!r} must be a finite number >= 0")
    if drop is None or math.isnan(drop):
        return False
    return drop <= max_drop + BUDGET_TOLERANCE


__all__ = ["DROP_TYPES", "BUDGET_TOLERANCE", "check_drop_type", "compute_drop", "within_budget"]
