"""A :class:`~rayq.tuning.result.SearchResult` made up for tests of what reads one
(exit codes, warnings, reports), without running a search."""

from __future__ import annotations

from typing import Any

import pandas as pd

from rayq.core.plan import QuantPlan
from rayq.tuning.result import SearchResult


def search_result(
    fallback: tuple[str, ...] = (), status: str = "met", *, low: float, high: float, **fields: Any
) -> SearchResult:
    """A result on OpenVINO with plan ``fallback``, ``status`` and a speed-up interval
    ``[low, high]`` (estimate: its middle); ``fields`` set any other keyword field.

    Example:
        >>> search_result(("a",), "no_speedup", low=0.9, high=1.1).speedup
        1.0
    """
    return SearchResult(
        None,
        QuantPlan(fallback=fallback),
        status,
        0.9,
        0.9,
        0.0,
        0.01,
        "absolute",
        1.0,
        None,
        1.0,
        "openvino",
        pd.DataFrame(),
        pd.DataFrame(),
        1.0,
        1.0,
        **{"speedup": (low + high) / 2, "speedup_low": low, "speedup_high": high, **fields},
    )
