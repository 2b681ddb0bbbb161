"""Loaders for the bundled digits example data (numpy + pyarrow only, no torch).

The files are made by ``make_digits.py``; inputs are float32 ``[N, 1, 8, 8]`` in
[0, 1], labels int64 ``[N]``.

Example:
    >>> from examples.digits.data import load_calibration, load_validation, top1
    >>> x_cal = load_calibration()
    >>> x_val, y_val = load_validation()
    >>> x_cal.shape, x_val.shape, y_val.shape
    ((300, 1, 8, 8), (400, 1, 8, 8), (400,))
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
CALIBRATION = HERE / "calibration.npz"
VALIDATION = HERE / "validation.npz"
MODEL = HERE / "digits_cnn.onnx"


def load_calibration(path: str | Path = CALIBRATION) -> np.ndarray:
    """Calibration images, float32 ``[N, 1, 8, 8]``.

    Example:
        >>> load_calibration().dtype
        dtype('float32')
    """
    with np.load(path) as data:
        return data["input"]


def load_validation(path: str | Path = VALIDATION) -> tuple[np.ndarray, np.ndarray]:
    """Validation ``(images float32 [N, 1, 8, 8], labels int64 [N])``.

    Reads the ``.npz`` by default; a ``.parquet`` path (column ``input`` list<float32>,
    ``label`` int64, metadata ``rayq.shape.input``) gives the same arrays.

    Example:
        >>> x, y = load_validation(HERE / "validation.parquet")
        >>> x.shape, y.dtype
        ((400, 1, 8, 8), dtype('int64'))
    """
    path = Path(path)
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        meta = table.schema.metadata or {}
        shape = tuple(int(s) for s in meta.get(b"rayq.shape.input", b"1,8,8").split(b","))
        flat = table.column("input").combine_chunks().flatten().to_numpy()
        images = flat.astype(np.float32).reshape((table.num_rows, *shape))
        return images, table.column("label").to_numpy().astype(np.int64)
    with np.load(path) as data:
        return data["input"], data["label"]


def top1(logits: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy of ``logits [N, C]`` against integer ``labels [N]``.

    Example:
        >>> top1(np.array([[0.1, 0.9], [0.8, 0.2]]), np.array([1, 1]))
        0.5
    """
    logits, labels = np.asarray(logits), np.asarray(labels)
    if logits.ndim != 2 or len(logits) != len(labels) or len(labels) == 0:
        raise ValueError(f"need logits [N, C] and labels [N], got {logits.shape} and {labels.shape}")
    return float((logits.argmax(axis=1) == labels).mean())
