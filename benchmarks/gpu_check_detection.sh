#!/usr/bin/env bash
# GPU checks of the detector families added after gpu_check.sh (two-stage, RepPoints, Swin,
# DINO, Grounding DINO), in one run of about 6.5 minutes on one H200:
#   1. the plain-torch ops on CUDA = on the CPU (tests/models/detection/test_ops_cuda.py) and
#      every recipe of these families trained two steps on CUDA (train.device=auto);
#   2. `kdforge bench --device cuda` on the coco-two-stage, coco-swin and coco-dino groups;
#   3. RoIAlign and deformable convolution forward + backward on CUDA, plain torch against
#      torchvision's kernels;
#   4. benchmarks/shapes_kd.py on CUDA: RepPoints at twice the CPU run's epochs, student
#      alone vs CanKD.
# Writes what it measures under ${OUT:-/tmp/gpu_check}; needs kdforge's dependencies
# importable (omegaconf and pycocotools may have to be installed first).
set -u
out=${OUT:-/tmp/gpu_check}
mkdir -p "$out"
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD PYTHONUNBUFFERED=1
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"

timeout 150 python3 -m pytest -q -p no:cacheprovider -n 8 tests/models/detection/test_ops_cuda.py \
  tests/test_cascade_rcnn_recipes.py tests/test_reppoints_recipes.py tests/test_swin_recipes.py \
  tests/test_dino_recipes.py tests/test_grounding_dino_recipes.py tests/test_objects365_recipes.py \
  2>&1 | tail -n 25 | tee "$out/tests.txt"

timeout 110 python3 -m kdforge bench --device cuda --repeats 7 --no-memory \
  --groups coco-two-stage coco-swin coco-dino --out "$out/bench_cuda.json" \
  2>&1 | tail -n 30 | tee "$out/bench.txt"

timeout 40 python3 benchmarks/roi_align.py --device cuda --repeats 20 --warmup 3 \
  --out "$out/roi_align_cuda.json" 2>&1 | tail -n 6
timeout 40 python3 benchmarks/deform_conv.py --device cuda --repeats 20 --warmup 3 \
  --out "$out/deform_conv_cuda.json" 2>&1 | tail -n 6

timeout 260 python3 benchmarks/shapes_kd.py --only reppoints --device cuda --threads 4 \
  --reppoints-teacher-epochs 48 --reppoints-epochs 24 \
  --out /tmp/shapes_kd 2>&1 | grep -v Warning | tail -n 30 | tee "$out/shapes_kd.txt"
cp /tmp/shapes_kd/results.json "$out/shapes_kd.json" 2>/dev/null
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv | tee "$out/gpu.txt"
