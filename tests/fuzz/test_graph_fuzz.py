"""Property-based graph fuzzing: every valid random model quantizes, or rayq refuses it with a
RayqError; the quantized model is valid, runs on ONNX Runtime and OpenVINO with FP32's output
shapes, and stays close to FP32.

Profiles (``RAYQ_FUZZ_PROFILE``): ``ci`` (default: 100 examples, derandomized, no example
database, so CI is deterministic) and ``long`` (2000 examples; ``bench/fuzz.py`` counts
outcomes by class over seeds instead of stopping at the first failure).

The NMSE bound (:data:`rayq.testing.fuzz_check.NMSE_BOUND` = 0.1, per output and runtime)
is for 8-bit QDQ with ``overflow_fix="enable"`` (7-bit weights: this AVX2 machine saturates
u8*s8 pair sums with full 8-bit weights) on random models of at most 8 steps, measured on
calibration-range inputs: on passing examples the largest value seen is ~0.07, the median
~0.01; a misplaced or mis-scaled quantizer gives ~1.
"""

from __future__ import annotations

import os

import onnx
import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from rayq.testing.fuzz import STABLE_STORAGES, random_case
from rayq.testing.fuzz_check import check_case, draw_options

pytest.importorskip("openvino")

_COMMON = dict(
    deadline=None,
    database=None,
    derandomize=True,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("rayq-fuzz-ci", max_examples=100, **_COMMON)
settings.register_profile("rayq-fuzz-long", max_examples=2000, **_COMMON)
PROFILE = settings.get_profile(f"rayq-fuzz-{os.environ.get('RAYQ_FUZZ_PROFILE', 'ci')}")


class HypothesisChooser:
    """The generator's :class:`~rayq.testing.fuzz.Chooser` on ``st.data()``, so hypothesis shrinks models."""

    def __init__(self, data: st.DataObject) -> None:
        self.data = data

    def integer(self, lo: int, hi: int) -> int:
        return self.data.draw(st.integers(lo, hi))

    def choice(self, options):
        return self.data.draw(st.sampled_from(options))


def _check(data: st.DataObject, storages) -> None:
    chooser = HypothesisChooser(data)
    case = random_case(chooser, storages=storages)
    options = draw_options(chooser)
    outcome = check_case(case, options)
    event(
        outcome.kind
        if outcome.skipped is None
        else f"{outcome.kind}, quantized model not run on OpenVINO: {outcome.skipped}"
    )  # fuzz_check.RUNTIME_GAPS
    assume(not outcome.kind.startswith("skipped:"))  # the runtimes disagree on the FP32 model
    assert outcome.ok, (
        f"{outcome.kind}: {outcome.detail}\n{case.describe()}\noptions {options}\n"
        f"{onnx.printer.to_text(case.model.graph)}"
    )


@given(data=st.data())
@PROFILE
def test_random_graph_quantizes_and_runs_close_to_fp32(data):
    _check(data, STABLE_STORAGES)
