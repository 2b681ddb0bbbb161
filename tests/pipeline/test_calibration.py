"""Calibration: sharded statistics are bit-exact, and the Parquet cache is used safely."""

from __future__ import annotations

import logging

import numpy as np
import pytest

import rayq
from rayq.api.session import ModelSession
from rayq.backends.onnx import OnnxBackend
from rayq.core.plan import QuantPlan
from rayq.testing.models import mlp, random_inputs, resnet_like


@pytest.fixture(scope="module")
def cnn():
    model = resnet_like(with_concat=True)
    calib = np.concatenate([f["input"] for f in random_inputs(model, 40, seed=1)])
    return model, calib


def _plan(estimator: str = "histogram_mse") -> QuantPlan:
    return QuantPlan.create(advanced=rayq.AdvancedQuantizationParameters(activation_estimator=estimator))


@pytest.fixture(scope="module")
def single_pass(cnn):
    model, calib = cnn
    session = ModelSession(model, calib, subset_size=40, batch_size=4)  # 10 batches
    stats = session.statistics(_plan(), histograms=True, num_workers=1, use_cache=False)
    return session, stats


@pytest.mark.parametrize("workers", [2, 3])
def test_sharded_statistics_equal_single_pass_bit_exactly(cnn, single_pass, workers, ray_cluster):
    model, calib = cnn
    session, reference = single_pass
    sharded = ModelSession(model, calib, subset_size=40, batch_size=4)
    stats = sharded.statistics(_plan(), histograms=True, num_workers=workers, use_cache=False)
    assert sharded.info.num_workers == workers and not sharded.info.cached
    assert len(sharded.info.node_ids) == 1  # the nodes that computed shards: one local node
    assert stats.batch_ids == frozenset(range(10))
    hists = [n for n in stats.names() if stats[n].hist is not None]
    assert len(hists) >= 10  # every activation quantizer input has a histogram
    assert any(stats[n].channel_mean is not None for n in stats.names())  # bias-correction means too
    assert stats.equals(reference)
    # and so the quantized models are identical
    plan = _plan()
    from rayq.pipeline.build import build_quantized

    a, _ = build_quantized(session.backend, session.model, session.graph, reference, plan)
    b, _ = build_quantized(session.backend, session.model, session.graph, stats, plan)
    assert a.SerializeToString() == b.SerializeToString()


def test_statistics_depend_on_data(cnn, single_pass):
    """Guard for the test above: other data gives statistics that are not ``equals``."""
    model, calib = cnn
    _, reference = single_pass
    other = ModelSession(model, calib[::-1].copy(), subset_size=36, batch_size=4)
    stats = other.statistics(_plan(), histograms=True, num_workers=1, use_cache=False)
    assert not stats.equals(reference)


class _Counter:
    """Counts the instrumented-model runners created (one per calibration pass)."""

    def __init__(self, monkeypatch):
        self.calls = 0
        original = OnnxBackend.stat_runner

        def counting(backend, *args, **kwargs):
            self.calls += 1
            return original(backend, *args, **kwargs)

        monkeypatch.setattr(OnnxBackend, "stat_runner", counting)


@pytest.fixture
def runners(monkeypatch):
    return _Counter(monkeypatch)


def _quantize(model, calib, **kwargs):
    kwargs.setdefault("subset_size", 24)
    return rayq.quantize(model, calib, num_workers=1, fast_bias_correction=True, **kwargs)


def test_cache_hit_skips_calibration(cnn, runners, rayq_cache_dir, caplog):
    model, calib = cnn
    first = _quantize(model, calib)
    assert runners.calls == 1
    files = list(rayq_cache_dir.glob("*.parquet"))
    assert len(files) == 1  # written where RAYQ_CACHE_DIR says
    with caplog.at_level(logging.INFO, logger="rayq"):
        second = _quantize(model, calib)
    assert runners.calls == 1, "the second quantize recalibrated"
    assert "cached statistics" in caplog.text
    assert second.SerializeToString() == first.SerializeToString()


def test_session_reports_cache_hit(cnn, rayq_cache_dir):
    model, calib = cnn
    plan = _plan("minmax")
    a = ModelSession(model, calib, subset_size=8)
    stats_a = a.statistics(plan, histograms=False, num_workers=1)
    b = ModelSession(model, calib, subset_size=8)
    stats_b = b.statistics(plan, histograms=False, num_workers=1)
    assert not a.info.cached and b.info.cached
    assert a.info.cache_key == b.info.cache_key
    assert stats_b.equals(stats_a)


def test_other_subset_or_data_misses_the_cache(cnn, runners):
    model, calib = cnn
    _quantize(model, calib, subset_size=24)
    _quantize(model, calib, subset_size=23)  # a different subset
    assert runners.calls == 2
    _quantize(model, calib + np.float32(1e-3), subset_size=24)  # different values
    assert runners.calls == 3
    _quantize(model, calib, subset_size=24)  # the first one again: a hit
    assert runners.calls == 3


def test_other_model_or_statistic_set_misses_the_cache(cnn, runners):
    model, calib = cnn
    _quantize(model, calib)
    _quantize(
        model, calib, advanced_parameters=rayq.AdvancedQuantizationParameters(activation_estimator="histogram_mse")
    )  # needs histograms: a second pass
    assert runners.calls == 1 + 2
    _quantize(resnet_like(with_concat=True, seed=1), calib)  # other weights
    assert runners.calls == 4


def test_cache_disabled_neither_reads_nor_writes(cnn, runners, rayq_cache_dir):
    model, calib = cnn
    _quantize(model, calib, cache=False)
    assert not list(rayq_cache_dir.glob("*.parquet"))
    _quantize(model, calib)
    _quantize(model, calib, cache=False)
    assert runners.calls == 3


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_corrupt_cache_file_is_ignored(cnn, runners, rayq_cache_dir, caplog, damage):
    model, calib = cnn
    first = _quantize(model, calib)
    (path,) = rayq_cache_dir.glob("*.parquet")
    data = path.read_bytes()
    path.write_bytes({"garbage": b"not parquet at all" * 10, "truncated": data[: len(data) // 2], "empty": b""}[damage])
    with caplog.at_level(logging.WARNING):
        second = _quantize(model, calib)
    assert runners.calls == 2, "a corrupt cache entry must be recomputed"
    assert "ignoring unreadable statistics cache" in caplog.text
    assert second.SerializeToString() == first.SerializeToString()
    # and the entry was rewritten: the next run hits it again
    _quantize(model, calib)
    assert runners.calls == 2


def test_cache_file_with_wrong_content_is_ignored(cnn, runners, rayq_cache_dir, caplog):
    """A readable Parquet file with the wrong columns is as bad as a damaged one."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    model, calib = cnn
    _quantize(model, calib)
    (path,) = rayq_cache_dir.glob("*.parquet")
    pq.write_table(pa.table({"x": [1, 2, 3]}), str(path))
    with caplog.at_level(logging.WARNING):
        _quantize(model, calib)
    assert runners.calls == 2
    assert "ignoring untrusted statistics cache" in caplog.text and "no digest" in caplog.text


def test_single_batch_runs_in_process(runners):
    """One batch never starts Ray actors, whatever num_workers says."""
    model = mlp()
    calib = np.concatenate([f["input"] for f in random_inputs(model, 8, seed=0)])
    session = ModelSession(model, calib, subset_size=8, batch_size=8)
    session.statistics(_plan("minmax"), histograms=False, num_workers=4, use_cache=False)
    assert session.info.num_workers == 1 and runners.calls == 1


def test_default_workers_calibrate_in_process_on_a_small_machine_without_ray(monkeypatch, caplog):
    """num_workers=None with no Ray cluster to join: a 2-CPU machine calibrates in-process
    (a local Ray would only add daemons and single-threaded actors on the same cores);
    a larger one, or an explicit num_workers, still uses Ray."""
    from rayq.api import session as session_mod

    monkeypatch.setattr(session_mod, "_would_start_local_ray", lambda: True)
    monkeypatch.setattr(session_mod, "default_workers", lambda: 2)
    with caplog.at_level(logging.INFO, logger="rayq"):
        assert session_mod.resolve_workers(None, 10, calibration=True) == 1
    assert "calibrating in-process" in caplog.text
    started = []
    monkeypatch.setattr("rayq.distributed.cluster.init", lambda *a, **k: started.append(1))
    monkeypatch.setattr("rayq.distributed.cluster.cluster_cpus", lambda: 16)
    assert session_mod.resolve_workers(None, 10) == 10  # evaluators: Ray
    assert session_mod.resolve_workers(3, 10, calibration=True) == 3  # explicit: Ray
    monkeypatch.setattr(session_mod, "default_workers", lambda: 16)
    assert session_mod.resolve_workers(None, 10, calibration=True) == 10  # a bigger machine: Ray
    assert len(started) == 3


def test_would_start_local_ray_follows_ray_address(monkeypatch):
    from rayq.api import session as session_mod

    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")
    assert not session_mod._would_start_local_ray()


def test_concurrent_writers_of_one_key_all_succeed(rayq_cache_dir):
    """The searches of a sweep run in threads of one process and may save the same key."""
    from concurrent.futures import ThreadPoolExecutor

    from rayq.core.stats import StatisticSet
    from rayq.pipeline import cache

    stats = StatisticSet()
    stats.update(0, {"x": {"min": np.array([-1.0]), "max": np.array([2.0])}})
    with ThreadPoolExecutor(8) as pool:
        paths = list(pool.map(lambda _: cache.save(stats, "k"), range(32)))
    assert len(set(paths)) == 1 and sorted(p.name for p in rayq_cache_dir.iterdir()) == ["k.parquet"]
    assert cache.load("k")["x"].max == 2.0


def _rewrite_cache(path, edit):
    """Rewrite a cache file through pyarrow, keeping its schema metadata (the digest)."""
    import pyarrow.parquet as pq

    table = pq.read_table(str(path))
    rows = edit(table.to_pydict())
    pq.write_table(type(table).from_pydict(rows, schema=table.schema), str(path))


def _scaled_by_50(rows):
    scaled = []
    for dtype, data in zip(rows["dtype"], rows["data"]):
        arr = np.frombuffer(data, dtype=np.dtype(dtype))
        scaled.append((arr * 50).astype(arr.dtype).tobytes() if arr.dtype.kind == "f" else data)
    return {**rows, "data": scaled}


def _one_tensor_deleted(rows):
    victim = next(t for t in rows["tensor"] if not t.startswith("__"))
    keep = [i for i, t in enumerate(rows["tensor"]) if t != victim]
    return {k: [v[i] for i in keep] for k, v in rows.items()}


@pytest.mark.parametrize("edit", [_scaled_by_50, _one_tensor_deleted], ids=["scaled_by_50", "tensor_deleted"])
def test_tampered_cache_is_recalibrated_with_a_warning(cnn, runners, rayq_cache_dir, caplog, edit):
    """Statistics edited in the cache (values x50, a tensor's rows deleted) are never used
    silently: a warning, a recalibration, and the same model as a clean run."""
    model, calib = cnn
    clean = _quantize(model, calib)
    (path,) = rayq_cache_dir.glob("*.parquet")
    _rewrite_cache(path, edit)
    with caplog.at_level(logging.WARNING):
        second = _quantize(model, calib)
    assert runners.calls == 2, "a tampered cache entry must be recomputed"
    assert "ignoring untrusted statistics cache" in caplog.text
    assert second.SerializeToString() == clean.SerializeToString()


def test_cache_entry_missing_a_needed_tensor_is_recalibrated(cnn, rayq_cache_dir, caplog):
    """Even with a consistent digest, an entry lacking a tensor the plan needs is not used."""
    from rayq.pipeline import cache

    model, calib = cnn
    session = ModelSession(model, calib, subset_size=8)
    stats = session.statistics(_plan("minmax"), histograms=False, num_workers=1)
    key = session.info.cache_key
    assert cache.load(key, tensors=stats.names()) is not None
    with caplog.at_level(logging.WARNING):
        assert cache.load(key, tensors=[*stats.names(), "not_there"]) is None
    assert "lacks the statistics of 1 tensor" in caplog.text
