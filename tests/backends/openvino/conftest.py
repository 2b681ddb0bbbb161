"""Fixtures of the OpenVINO backend tests; the whole directory skips without openvino."""

from __future__ import annotations

import importlib.util

import pytest

if importlib.util.find_spec("openvino") is None or importlib.util.find_spec("onnx") is None:
    collect_ignore_glob = ["test_*.py"]


@pytest.fixture(scope="session")
def conv_net(tmp_path_factory):
    """rayq's resnet_like (residual Adds, a Concat, GAP, Gemm) converted from ONNX."""
    from .models import conv_net_model

    return conv_net_model(tmp_path_factory.mktemp("onnx"))


@pytest.fixture(scope="session")
def transformer():
    from .models import transformer_model

    return transformer_model()
