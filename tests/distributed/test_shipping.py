"""Models reach Ray workers as files when they are large (an ONNX model over 2 GB cannot
be one protobuf message): by the driver's folder on one host, or copied to each node in
raw-bytes chunks. A low threshold forces both routes on a small model with external
data; the statistics and metrics must equal in-process ones exactly."""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest

import rayq
from rayq.api.session import ModelSession
from rayq.backends import get_backend
from rayq.backends.onnx import files, reader
from rayq.distributed import collect as dc
from rayq.distributed import shipping
from rayq.distributed.eval_pool import RayEvaluatorPool
from rayq.pipeline import calibrate
from rayq.pipeline.build import placement_for
from rayq.pipeline.candidate import CandidateEvaluator
from rayq.testing.metrics import pair_accuracy
from rayq.testing.models import labeled_inputs, resnet_like, sensitive_mlp


def _arrays_equal(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for k, v in a.items():
        if isinstance(v, dict):
            _arrays_equal(v, b[k])
        else:
            np.testing.assert_array_equal(np.asarray(v), np.asarray(b[k]), err_msg=k)


def test_external_data_save_leaves_the_model_whole(tmp_path):
    """``onnx.save(..., save_as_external_data=True)`` empties the weights of the model it
    is given; the backend's writer must not (the session's model is shipped, then used)."""
    backend = get_backend("onnx")
    model = backend.load(resnet_like(input_shape=(3, 16, 16), widths=(8, 16), blocks_per_stage=1))
    before = backend.fingerprint(model)
    written = files.save_external(model, str(tmp_path / "m.onnx"), "m.onnx.data")
    assert [os.path.basename(p) for p in written] == ["m.onnx", "m.onnx.data"]
    assert os.path.getsize(written[1]) > 10_000  # the weights went to the data file
    assert backend.fingerprint(model) == before
    assert backend.fingerprint(backend.load(written[0])) == before
    assert any(
        t.data_location == onnx.TensorProto.EXTERNAL
        for t in onnx.load(written[0], load_external_data=False).graph.initializer
    )


@pytest.fixture(scope="module")
def calib():
    model = resnet_like(input_shape=(3, 16, 16), widths=(8, 16), blocks_per_stage=1)
    x = np.random.default_rng(3).normal(size=(64, 3, 16, 16)).astype(np.float32)
    session = ModelSession(model, x, subset_size=64, batch_size=8)
    spec = calibrate.stat_spec(
        session.graph, placement_for(session.graph, rayq.QuantPlan.create()), histograms=False, smooth_quant=False
    )
    local = calibrate.collect_local(session.backend, session.model, session.batches, spec)
    return session, spec, local.to_arrays()


@pytest.mark.parametrize("route", ["path", "chunks"])
def test_large_model_route_gives_the_same_statistics(ray_cluster, calib, monkeypatch, route):
    session, spec, local = calib
    monkeypatch.setattr(shipping, "BY_VALUE_MAX_BYTES", 0)  # every model ships as files
    monkeypatch.setattr(shipping, "CHUNK_BYTES", 4096)  # many chunks per file
    monkeypatch.setattr(reader, "fits_in_memory_proto", lambda proto: False)  # saved with external data
    if route == "chunks":
        monkeypatch.setattr(shipping, "_single_host", lambda: False)  # as if the workers were on other hosts
    shards = dc.ShardedCalibration(
        "onnx", session.model, spec, session.batches, num_workers=2, resources={"num_cpus": 0.25}
    )
    shipment = shards.call.model
    try:
        assert shipment.data is None and shipment.files[0][0] == "model.onnx" and len(shipment.files) == 2
        if route == "path":
            assert shipment.chunks is None and os.path.isdir(shipment.folder)
        else:
            assert shipment.folder is None and len(shipment.chunks[1]) > 1  # the weights in several pieces
        stats, _ = shards.run_pass()
    finally:
        shards.close()
    _arrays_equal(stats.to_arrays(), local)
    if route == "path":
        assert not os.path.exists(shipment.folder)  # removed when the call ended
    else:
        assert os.path.isfile(os.path.join(shipping.node_copy(shipment.token), shipping._DONE))
        dc.collect_distributed(
            "onnx", session.model, session.batches, spec, num_workers=2, resources={"num_cpus": 0.25}
        )  # its tasks carry the ended call's token
        assert not os.path.exists(shipping.node_copy(shipment.token))  # the node's copy was dropped


def test_evaluators_load_a_model_shipped_as_files(ray_cluster, monkeypatch):
    monkeypatch.setattr(shipping, "BY_VALUE_MAX_BYTES", 0)
    monkeypatch.setattr(shipping, "_single_host", lambda: False)
    model = sensitive_mlp()
    x, y = labeled_inputs(model, 120)
    session = ModelSession(model, x[:32], subset_size=32)
    plan = rayq.QuantPlan.create()
    stats = session.statistics(plan, histograms=False, num_workers=1)
    items, kwargs = list(zip(x[32:], y[32:])), {"runtime": "onnxruntime", "calibration_batches": session.batches}
    local = CandidateEvaluator("onnx", session.model, stats, items, pair_accuracy, **kwargs)
    pool = RayEvaluatorPool(
        num_workers=2,
        resources={"num_cpus": 0.5},
        backend_name="onnx",
        model=session.model,
        stats=stats,
        items=items,
        validation_fn=pair_accuracy,
        kwargs=kwargs,
    )
    try:
        assert pool.call.model.chunks is not None
        values = [m.value for m in pool.map_metric([None, plan])]
    finally:
        pool.close()
    assert values == [local.fp32_metric().value, local.metric(plan).value]


def test_an_unreadable_shared_folder_is_a_cluster_error(ray_cluster, tmp_path):
    shipment = shipping.Shipment("onnx", "t" * 32, files=(("model.onnx", 1),), folder=str(tmp_path / "gone"))
    with pytest.raises(rayq.ClusterError, match="not readable on node"):
        shipping.receive(shipment)


def test_distributed_never_names_a_runtime_or_a_backend():
    """Backend specifics (providers, GPU devices, imports to warm) live behind the backend
    protocol: ``rayq.distributed`` only passes backend names through."""
    import pathlib
    import re

    import rayq.distributed

    folder = pathlib.Path(rayq.distributed.__file__).parent
    named = {
        p.name: re.findall(r"onnxruntime|openvino|\bort\b|[\"']onnx[\"']", p.read_text()) for p in folder.glob("*.py")
    }
    assert not {k: v for k, v in named.items() if v}
