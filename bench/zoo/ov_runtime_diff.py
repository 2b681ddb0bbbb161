"""Compare two OpenVINO models as the CPU plugin compiles them, layer by layer.

For each model: ``compiled.get_runtime_model()`` (f32 hint), every layer's ``layerType``,
``runtimePrecision``, output precision and input element types, keyed by the layer's
name (FakeQuantize name suffixes of rayq and NNCF made alike). Prints the layers only
one model has (counted by description: their names are generated, e.g. the bias
Reshapes) and, counted, every (A, B) pair of differing descriptions. Usage::

    python bench/zoo/ov_runtime_diff.py bench/.cache/zoo/q/mobilenet_v3_small_128_nncf_openvino.xml \\
        bench/.cache/zoo/q/mobilenet_v3_small_128_rayq_openvino.xml
"""

from __future__ import annotations

import argparse
import collections
import re

import openvino as ov


def layers(path: str) -> dict[str, tuple[str, ...]]:
    """Layer name -> (layerType, runtimePrecision, outputPrecisions, input element types)."""
    compiled = ov.Core().compile_model(path, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    out = {}
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        kind = info["layerType"].astype(str)
        if kind == "Const":
            continue
        name = re.sub(r"_output_0/rayq_fq|/fq_output_0", "/FQ", op.get_friendly_name())
        ins = ",".join(op.input(i).get_element_type().get_type_name() for i in range(op.get_input_size()))
        out[name] = (kind, info["runtimePrecision"].astype(str), info["outputPrecisions"].astype(str), ins)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a")
    ap.add_argument("b")
    args = ap.parse_args()
    a, b = layers(args.a), layers(args.b)
    for side, x, y in (("A", a, b), ("B", b, a)):
        only = collections.Counter(x[k] for k in x.keys() - y.keys())
        print(f"only in {side}:", dict(only.most_common()))
    diff = collections.Counter((a[k], b[k]) for k in a.keys() & b.keys() if a[k] != b[k])
    for (da, db), n in diff.most_common():
        print(f"{n:4d}  A {da}\n      B {db}")
    print(f"{len(a.keys() & b.keys())} common layers, {sum(diff.values())} differ")


if __name__ == "__main__":
    main()
