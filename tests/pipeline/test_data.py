"""Calibration data in every accepted form gives the same model as the plain array."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import rayq
from rayq.api.session import ModelSession
from rayq.pipeline import data
from rayq.testing.models import random_inputs, transformer_block

DIGITS = Path(__file__).resolve().parents[2] / "examples" / "digits"
MODEL = str(DIGITS / "digits_cnn.onnx")
N = 24


@pytest.fixture(scope="module")
def calib() -> np.ndarray:
    with np.load(DIGITS / "calibration.npz") as z:
        return z["input"][:N].copy()


@pytest.fixture(scope="module")
def reference(calib) -> bytes:
    return _quantize(calib).SerializeToString()


def _quantize(dataset, **kwargs):
    kwargs.setdefault("subset_size", N)
    return rayq.quantize(MODEL, dataset, num_workers=1, cache=False, **kwargs)


def _same(dataset, reference, **kwargs) -> None:
    assert _quantize(dataset, **kwargs).SerializeToString() == reference


def _write_parquet(path: Path, images: np.ndarray, labels: np.ndarray | None = None) -> None:
    """The ``rayq.shape.<col>`` convention of examples/digits/validation.parquet."""
    flat = images.reshape(len(images), -1)
    columns = {"input": pa.array(list(flat), type=pa.list_(pa.float32()))}
    if labels is not None:
        columns["label"] = pa.array(labels)
    table = pa.table(columns).replace_schema_metadata({"rayq.shape.input": ",".join(str(d) for d in images.shape[1:])})
    pq.write_table(table, str(path))


def test_dataset_with_transform_fn(calib, reference):
    items = [(x, i % 10) for i, x in enumerate(calib)]  # (image, label) like a DataLoader
    ds = rayq.Dataset(items, lambda item: item[0])
    assert ds.get_length() == N
    _same(ds, reference)


def test_dataset_of_batched_items(calib, reference):
    """A transform returning [1, C, H, W] (a batch of one) is the same as [C, H, W]."""
    _same(rayq.Dataset(list(calib), lambda x: x[None]), reference)


def test_numpy_array_float64_is_cast(calib, reference):
    _same(calib.astype(np.float64), reference)


def test_npz_and_npy_files(calib, reference, tmp_path):
    np.savez(tmp_path / "calib.npz", input=calib)
    np.save(tmp_path / "calib.npy", calib)
    _same(str(tmp_path / "calib.npz"), reference)
    _same(tmp_path / "calib.npy", reference)  # a Path works too


def test_parquet_file_with_shape_metadata(calib, reference, tmp_path):
    _write_parquet(tmp_path / "calib.parquet", calib, np.arange(N) % 10)
    items = data.load_path(tmp_path / "calib.parquet")
    assert items[0]["input"].shape == (1, 8, 8) and items[0]["input"].dtype == np.float32
    _same(str(tmp_path / "calib.parquet"), reference)


def test_parquet_directory(calib, reference, tmp_path):
    folder = tmp_path / "calib_parts"
    folder.mkdir()
    _write_parquet(folder / "part-0.parquet", calib[: N // 2])
    _write_parquet(folder / "part-1.parquet", calib[N // 2 :])
    _same(str(folder), reference)


def test_bundled_validation_parquet_matches_npz():
    items = data.load_path(DIGITS / "validation.parquet")
    with np.load(DIGITS / "validation.npz") as z:
        images, labels = z["input"], z["label"]
    assert len(items) == len(images) == 400
    np.testing.assert_array_equal(np.stack([it["input"] for it in items]), images)
    np.testing.assert_array_equal(np.array([it["label"] for it in items]), labels)


def test_parquet_without_shape_metadata_and_ragged_rows(tmp_path):
    pq.write_table(
        pa.table({"input": pa.array([[1.0, 2.0], [3.0, 4.0]], type=pa.list_(pa.float32()))}),
        str(tmp_path / "flat.parquet"),
    )
    items = data.load_path(tmp_path / "flat.parquet")
    assert items[1]["input"].tolist() == [3.0, 4.0]
    pq.write_table(
        pa.table({"input": pa.array([[1.0, 2.0], [3.0]], type=pa.list_(pa.float32()))}),
        str(tmp_path / "ragged.parquet"),
    )
    with pytest.raises(rayq.DataError, match="ragged"):
        data.load_path(tmp_path / "ragged.parquet")


def test_ray_data_from_numpy(calib, reference, ray_cluster):
    import ray

    _same(ray.data.from_numpy(calib), reference)


def test_ray_data_from_items(calib, reference, ray_cluster):
    import ray

    _same(ray.data.from_items([{"input": x} for x in calib]), reference)  # named column
    _same(ray.data.from_items(list(calib)), reference)  # bare values: column "item"


def test_ray_data_inside_rayq_dataset(calib, reference, ray_cluster):
    import ray

    ds = rayq.Dataset(ray.data.from_numpy(calib), lambda row: row["data"])
    _same(ds, reference)


def test_subset_size_larger_than_data_warns_and_uses_all(calib, caplog):
    with caplog.at_level(logging.WARNING, logger="rayq"):
        session = ModelSession(MODEL, calib, subset_size=1000)
    assert session.num_items == N
    assert f"subset_size=1000 but the dataset has {N} items" in caplog.text


def test_subset_takes_the_first_items(calib):
    a = ModelSession(MODEL, calib, subset_size=10)
    b = ModelSession(MODEL, calib[:10], subset_size=300)
    assert a.num_items == 10 and a.data_fingerprint == b.data_fingerprint


def test_batching_is_independent_of_the_item_form(calib):
    """Batch k always holds items [k*bs, (k+1)*bs): same fingerprint and batches."""
    a = ModelSession(MODEL, calib, subset_size=N, batch_size=5)
    b = ModelSession(MODEL, rayq.Dataset(list(calib), lambda x: {"input": x}), subset_size=N, batch_size=5)
    assert [i for i, _ in a.batches] == list(range(5))
    assert [f["input"].shape[0] for _, f in a.batches] == [5, 5, 5, 5, 4]
    assert a.data_fingerprint == b.data_fingerprint
    for (_, fa), (_, fb) in zip(a.batches, b.batches):
        np.testing.assert_array_equal(fa["input"], fb["input"])


# --------------------------------------------------------------------------------------
# multi-input models: dict and tuple items
# --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def two_inputs():
    model = transformer_block(with_attention_mask=True, hidden=32, ffn=64, seq_len=8)
    feeds = [{k: v[0] for k, v in f.items()} for f in random_inputs(model, 12, seed=3)]
    return model, feeds


def _quantize_two(model, dataset):
    return rayq.quantize(
        model, dataset, subset_size=12, model_type="transformer", num_workers=1, cache=False
    ).SerializeToString()


def test_multi_input_dict_and_tuple_items(two_inputs):
    model, feeds = two_inputs
    as_dicts = _quantize_two(model, feeds)
    as_tuples = _quantize_two(model, [(f["input"], f["attention_mask"]) for f in feeds])
    reordered = _quantize_two(
        model, [{"attention_mask": f["attention_mask"], "input": f["input"], "label": 1} for f in feeds]
    )  # extra keys are ignored
    transformed = _quantize_two(model, rayq.Dataset(feeds, lambda f: (f["input"], f["attention_mask"])))
    assert as_dicts == as_tuples == reordered == transformed


def test_multi_input_npz_columns(two_inputs, tmp_path):
    model, feeds = two_inputs
    np.savez(
        tmp_path / "calib.npz",
        input=np.stack([f["input"] for f in feeds]),
        attention_mask=np.stack([f["attention_mask"] for f in feeds]),
    )
    assert _quantize_two(model, str(tmp_path / "calib.npz")) == _quantize_two(model, feeds)


def test_multi_input_needs_every_input(two_inputs):
    model, feeds = two_inputs
    with pytest.raises(rayq.DataError, match=r"missing model input\(s\) \['attention_mask'\]"):
        _quantize_two(model, [{"input": f["input"]} for f in feeds])
    with pytest.raises(rayq.DataError, match="has 1 parts but the model has 2 inputs"):
        _quantize_two(model, [(f["input"],) for f in feeds])
    with pytest.raises(rayq.DataError, match="items must be dicts or tuples"):
        _quantize_two(model, [f["input"] for f in feeds])
