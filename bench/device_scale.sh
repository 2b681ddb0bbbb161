#!/usr/bin/env bash
# The prepared device check of issue #5 (scale on a 16-core node with a GPU), as one call:
#   ../shared/device/pack-wheels.sh            # once, here: ray + optuna into .devwheels/
#   device run: command "RAYQ_COMMIT=<sha> bash bench/device_scale.sh", carry [".devwheels"],
#               timeout_s 590
# Results land in $OUT (the device tool's output folder); copy scale.json to
# bench/results/scale_device.json (it replaces the previous device run) and update bench/README.md.
# The device image has onnxruntime (CPU), torch and onnx, but no openvino: nothing here needs it.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck disable=SC1091
source .devwheels/activate.sh
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" RAY_DISABLE_USAGE_STATS=1 RAYQ_PROGRESS=log
OUT="${OUT:-/tmp/rayq-device}"
mkdir -p "$OUT"
sha="${RAYQ_COMMIT:-unknown}"
echo "cpus: $(nproc)"; nvidia-smi -L 2>/dev/null || true
# calibration (new job cold / workers started early / warm call / pass) and ranking, W = 1..16
timeout 400 python3 bench/bench_scale.py --workers 1,2,4,8,16 --repeats 2 --gpu-check \
    --commit "$sha" --out "$OUT/scale.json"
# calibration of a ResNet-50-sized model (300 items), with what time is left
timeout 150 python3 bench/bench_scale.py --model resnet50 --samples 300 --phases calibration \
    --workers 1,8,16 --repeats 1 --commit "$sha" --out "$OUT/scale_resnet50.json" || true
