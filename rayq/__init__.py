"""rayq: distributed post-training INT8 quantization search on Ray.

The API mirrors NNCF (``quantize``, ``quantize_with_accuracy_control``, ``Dataset``,
``IgnoredScope``, the advanced-parameter classes and the option enums such as
``QuantizationPreset`` and ``DropType``), so ``import rayq as nncf`` runs NNCF's
examples, and adds a distributed, latency-measuring ``search`` (its options: the frozen
``SearchSpace``, ``SearchOptions`` and ``Execution``), which ``submit`` runs as a Ray job
that a notebook can follow, ``attach`` to again and read the result of.

Names are imported lazily (PEP 562), so ``import rayq.core`` stays free of
ray, onnxruntime, openvino and optuna. Importing rayq installs its log handler
(:mod:`rayq.logs`); ``rayq.set_log_level`` or ``RAYQ_LOG_LEVEL`` sets the level
of its log lines and progress bars together.
"""

from __future__ import annotations

import importlib
from typing import Any

from rayq import logs as _logs  # noqa: F401 (installs rayq's log handler, reads RAYQ_LOG_LEVEL)

__version__ = "0.1.0"

_EXPORTS = {
    "quantize": "rayq.api.quantize",
    "quantize_with_accuracy_control": "rayq.api.accuracy_control",
    "search": "rayq.api.search",
    "SearchResult": "rayq.tuning.result",
    "SearchSpace": "rayq.api.options",
    "SearchOptions": "rayq.api.options",
    "Execution": "rayq.api.options",
    "submit": "rayq.api.submit",
    "attach": "rayq.api.submit",
    "SearchJob": "rayq.api.submit",
    "Dataset": "rayq.pipeline.data",
    "IgnoredScope": "rayq.core.scope",
    "Subgraph": "rayq.core.scope",
    "AdvancedQuantizationParameters": "rayq.core.plan",
    "AdvancedSmoothQuantParameters": "rayq.core.advanced",
    "AdvancedBiasCorrectionParameters": "rayq.core.advanced",
    "AdvancedAccuracyRestorerParameters": "rayq.core.advanced",
    "QuantizationPreset": "rayq.core.enums",
    "QuantizationMode": "rayq.core.enums",
    "ModelType": "rayq.core.enums",
    "TargetDevice": "rayq.core.enums",
    "DropType": "rayq.core.enums",
    "OverflowFix": "rayq.core.enums",
    "QuantPlan": "rayq.core.plan",
    "set_log_level": "rayq.logs",
    "init": "rayq.distributed.cluster",
    "shutdown": "rayq.distributed.cluster",
    "RayqError": "rayq.errors",
    "ConfigError": "rayq.errors",
    "DataError": "rayq.errors",
    "BackendError": "rayq.errors",
    "CalibrationError": "rayq.errors",
    "SearchError": "rayq.errors",
    "ClusterError": "rayq.errors",
    "OutputError": "rayq.errors",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'rayq' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
