"""Checks that a batch of inputs fits a model, shared by every backend."""

from __future__ import annotations

import numpy as np

from rayq.backends.base import InputSpec
from rayq.errors import DataError


def check_feeds(specs: list[InputSpec], feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Return ``feeds`` cast to the model's dtypes, or raise a :class:`DataError`.

    Checks input names (missing / unexpected), ranks and static dims. A scalar (0-d)
    input also takes one value of any rank (``np.array([16000])`` for a sample
    rate), reshaped to 0-d: ONNX Runtime accepts such data, OpenVINO only a 0-d array.
    """
    expected = {s.name: s for s in specs}
    missing = sorted(set(expected) - set(feeds))
    extra = sorted(set(feeds) - set(expected))
    if missing or extra:
        raise DataError(
            f"data does not match the model inputs: model expects {sorted(expected)}, "
            f"data provides {sorted(feeds)}"
            + (f"; missing {missing}" if missing else "")
            + (f"; unexpected {extra}" if extra else "")
        )
    out = {}
    for name, spec in expected.items():
        value = np.asarray(feeds[name])
        if not spec.shape and value.ndim and value.size == 1:
            value = value.reshape(())
        if value.ndim != len(spec.shape) or any(d is not None and d != v for d, v in zip(spec.shape, value.shape)):
            want = tuple("?" if d is None else d for d in spec.shape)
            raise DataError(f"input {name!r}: model expects shape {want}, data has shape {value.shape}")
        if value.dtype != np.dtype(spec.dtype):
            if value.dtype.kind != np.dtype(spec.dtype).kind and not (
                value.dtype.kind in "iu" and np.dtype(spec.dtype).kind in "iu"
            ):
                raise DataError(f"input {name!r}: model expects {spec.dtype}, data has {value.dtype}")
            value = value.astype(spec.dtype)
        out[name] = value
    return out
