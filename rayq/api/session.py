"""A model and its calibration data, prepared once: the shared front half of
``quantize``, ``quantize_with_accuracy_control`` and ``search``.

It loads the model through its backend, turns the dataset into fixed batches
(batch k = items [k*bs, (k+1)*bs), independent of the worker count) that are read
lazily (:class:`rayq.pipeline.stream.BatchStream`: memory does not grow with the
calibration-set size), and returns
calibration statistics from the Parquet cache or by calibrating -- in this process
(``num_workers=1``) or sharded over Ray worker tasks.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

from rayq.api.progress import Progress
from rayq.backends import convert, detect
from rayq.core.plan import QuantPlan
from rayq.core.stats import StatisticSet
from rayq.errors import ConfigError
from rayq.pipeline import cache, calibrate, data
from rayq.pipeline.build import placement_for
from rayq.pipeline.stream import BatchStream

log = logging.getLogger(__name__)


@dataclass
class CalibrationInfo:
    """How the statistics were obtained (for summaries and tests); ``node_ids``: the Ray
    nodes that computed shards (empty in-process)."""

    cached: bool
    seconds: float
    num_workers: int
    node_ids: list[str] = field(default_factory=list)
    cache_key: str = ""


class ModelSession:
    """A loaded model with its calibration batches (a lazy, re-iterable sequence of
    ``(batch id, feeds)``).

    Args:
        model: ``onnx.ModelProto``, ``openvino.Model`` or a path; or a PyTorch, TensorFlow,
            TFLite or PaddlePaddle model, converted first (see :mod:`rayq.backends.convert`).
        calibration_dataset: Anything :func:`rayq.pipeline.data.as_dataset` accepts.
        subset_size: Number of items used (the first ones).
        batch_size: Calibration batch size (None: automatic).
        convert_to: ``"openvino"`` (None) or ``"onnx"``: what a framework model becomes.
    """

    def __init__(
        self,
        model: Any,
        calibration_dataset: Any,
        *,
        subset_size: int = 300,
        batch_size: int | None = None,
        convert_to: str | None = None,
    ) -> None:
        if subset_size is not None and (not isinstance(subset_size, int) or subset_size < 1):
            raise ConfigError(f"subset_size={subset_size!r} must be a positive integer")
        convert.check_target(convert_to)
        items = None
        if convert.framework_of(model) is not None:  # converted with the first item as example input
            items = data.take(data.as_dataset(calibration_dataset), subset_size)
            model = convert.prepare(model, convert.example_from(calibration_dataset, items[0]), convert_to)
        self.backend = detect(model)
        self.model = self.backend.load(model)
        self.graph = self.backend.graph(self.model)
        self.specs = self.backend.inputs(self.model)
        # a framework model's items were read already (its first one is the example input)
        source = data.as_dataset(calibration_dataset) if items is None else data.Dataset(items)
        self.batches = BatchStream(source, self.specs, subset_size=subset_size, batch_size=batch_size)
        self.num_items = self.batches.num_items
        self.batch_size = self.batches.batch_size
        self.data_fingerprint = self.batches.fingerprint
        self.model_fingerprint = self.backend.fingerprint(self.model)
        self.info: CalibrationInfo | None = None

    def statistics(
        self,
        plan: QuantPlan,
        *,
        histograms: bool,
        exact_bias: bool | None = None,
        num_workers: int | None = None,
        use_cache: bool = True,
        cache_dir: str | None = None,
        worker_resources: dict | None = None,
    ) -> StatisticSet:
        """Statistics for every plan sharing ``plan``'s model type and ignored scope.

        ``histograms`` adds the histogram pass (quantile / histogram_mse estimators);
        ``exact_bias`` the FP32 output means of the exact bias correction (default:
        when ``plan`` uses it).
        """
        check_workers(num_workers)
        spec = calibrate.stat_spec(
            self.graph,
            placement_for(self.graph, plan),
            histograms=histograms,
            smooth_quant=plan.model_type == "transformer",
            exact_bias=plan.bias_correction == "exact" if exact_bias is None else exact_bias,
        )
        key = cache.cache_key(self.model_fingerprint, self.data_fingerprint, spec.key_material(), self.batch_size)
        start = time.perf_counter()
        if use_cache:
            stats = cache.load(key, cache_dir, tensors=spec.tensors())
            if stats is not None:
                self.info = CalibrationInfo(True, time.perf_counter() - start, 0, cache_key=key)
                log.info("calibration statistics loaded from cache (%s)", key)
                return stats
        passes = 2 if spec.histogram_tensors else 1
        with Progress("calibration", total=len(self.batches) * passes) as bar:
            workers = resolve_workers(num_workers, len(self.batches), calibration=True)
            node_ids: list[str] = []
            if workers == 1:
                stats = calibrate.collect_local(self.backend, self.model, self.batches, spec, on_batch=bar.update)
            else:
                from rayq.distributed.collect import collect_distributed

                stats, node_ids = collect_distributed(
                    self.backend.name,
                    self.model,
                    self.batches,
                    spec,
                    num_workers=workers,
                    resources=worker_resources,
                    on_batch=bar.update,
                )
        self.info = CalibrationInfo(False, time.perf_counter() - start, workers, node_ids, key)
        if use_cache:
            try:
                cache.save(stats, key, cache_dir)
            except OSError as exc:
                log.warning("could not write the statistics cache: %s", exc)
        return stats


#: With ``num_workers=None``, calibration starts a local Ray of its own only on machines
#: with more CPUs than this: on 2 cores Ray's daemons and single-threaded actors cost more
#: than they give (ResNet-50, 300 items: 21.9 s with a local Ray vs 15.7 s in-process).
SMALL_MACHINE_CPUS = 2


def resolve_workers(num_workers: int | None, num_batches: int, *, calibration: bool = False) -> int:
    """1 means in-process; otherwise the number of Ray workers (never more than batches).

    ``num_workers=None`` uses every CPU of the connected (or ``RAY_ADDRESS``) cluster; with
    no cluster, a local one is started, except for calibration on a small machine.
    """
    if num_workers == 1 or num_batches == 1:
        return 1
    if num_workers is None and calibration and _would_start_local_ray() and default_workers() <= SMALL_MACHINE_CPUS:
        log.info(
            "calibrating in-process: no Ray cluster to join and %d CPUs here (num_workers=N starts a local Ray)",
            default_workers(),
        )
        return 1
    from rayq.distributed import cluster

    cluster.init()
    workers = num_workers or cluster.cluster_cpus()
    return max(1, min(workers, num_batches))


def check_workers(num_workers: Any) -> None:
    """``num_workers`` is None (every CPU of the cluster) or an integer >= 1.

    Raises:
        ConfigError: anything else (a string, a bool, zero).
    """
    if num_workers is not None and (
        isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 1
    ):
        raise ConfigError(f"num_workers={num_workers!r} must be None (every CPU of the cluster) or >= 1")


def start_workers_early(num_workers: int | None, resources: dict | None, *, subset_size: int | None) -> list:
    """When calibration will join a running Ray cluster (connected, or ``RAY_ADDRESS``, as
    under ``ray job submit``), start this job's worker processes now so they come up
    while the model and data load; returns the start tasks' refs (``[]`` when nothing
    was started). In-process calibration (``num_workers=1``) and a local Ray that rayq
    starts itself (Ray pre-starts workers for its first driver) start nothing.
    """
    check_workers(num_workers)
    if num_workers == 1 or _would_start_local_ray():
        return []
    from rayq.distributed import cluster, collect

    cluster.init()
    workers = min(num_workers or cluster.cluster_cpus(), subset_size or 1 << 30)  # at most one batch per item
    return collect.start_workers(workers, resources) if workers > 1 else []


def connect(address: str | None) -> None:
    """Join the Ray cluster at ``address`` (:class:`~rayq.api.options.Execution`'s), unless
    Ray is up already; None: nothing now (Ray is started or joined on demand)."""
    if address:
        from rayq.distributed import cluster

        if not cluster.is_connected():
            cluster.init(address)


def default_workers() -> int:
    return os.cpu_count() or 1


def _would_start_local_ray() -> bool:
    """True when no Ray connection exists and none is configured (``RAY_ADDRESS``)."""
    from rayq.distributed.cluster import is_connected

    return not is_connected() and not os.environ.get("RAY_ADDRESS")
