"""rayq: distributed post-training INT8 quantization search on Ray.

The API mirrors NNCF (``quantize``, ``quantize_with_accuracy_control``, ``Dataset``,
``IgnoredScope``) and adds a distributed, latency-measuring ``search``.
"""

from rayq.api import quantize
from rayq.search_api import quantize_with_accuracy_control, search
from rayq.core.plan import AdvancedQuantizationParameters, QuantPlan
from rayq.core.scope import IgnoredScope, Subgraph
from rayq.distributed.cluster import init, shutdown
from rayq.errors import (
    BackendError,
    CalibrationError,
    ClusterError,
    ConfigError,
    DataError,
    RayqError,
    SearchError,
)
from rayq.pipeline.data import Dataset
from rayq.search.result import SearchResult

__version__ = "0.1.0"

__all__ = [
    "quantize",
    "quantize_with_accuracy_control",
    "search",
    "SearchResult",
    "Dataset",
    "IgnoredScope",
    "Subgraph",
    "AdvancedQuantizationParameters",
    "QuantPlan",
    "init",
    "shutdown",
    "RayqError",
    "ConfigError",
    "DataError",
    "BackendError",
    "CalibrationError",
    "SearchError",
    "ClusterError",
]
