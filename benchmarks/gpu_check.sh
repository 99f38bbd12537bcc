#!/usr/bin/env bash
# GPU correctness and speed in one short run (about 8 minutes on one H200):
#   1. the engine, teacher, distiller, compile, loss-term and recipe tests on CUDA
#      (train.device=auto picks the GPU);
#   2. `kdforge bench --device cuda`;
#   3. a real KD run (CIFAR-100 recipe resnet32x4 -> resnet8x4, bf16 autocast, generated
#      CIFAR-format data) through `kdforge train`, for its images/s;
#   4. the interop suite against the machine's own torchvision, timm and transformers
#      (other versions than .venv-interop's; the tracker tests need wandb and mlflow);
#   5. benchmarks/roi_align.py and benchmarks/deform_conv.py on CUDA (plain torch against
#      torchvision's kernels).
# Writes what it measures under ${OUT:-/tmp/gpu_check}. Needs kdforge's dependencies
# importable (omegaconf and pycocotools may have to be installed first).
set -u
out=${OUT:-/tmp/gpu_check}
mkdir -p "$out"
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD PYTHONUNBUFFERED=1
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"

timeout 170 python3 -m pytest -q -p no:cacheprovider -n 8 \
  tests/engine tests/test_teacher.py tests/test_distiller.py tests/test_compile.py \
  tests/losses/test_terms.py tests/test_recipes.py tests/test_crosskd_recipes.py \
  tests/test_cankd_recipes.py tests/test_detection_recipes.py \
  tests/test_segmentation_recipes.py 2>&1 | tail -n 25 | tee "$out/tests.txt"

timeout 130 python3 -m kdforge bench --device cuda --repeats 7 --no-memory --out "$out/results_cuda.json" \
  2>&1 | tail -n 40 | tee "$out/bench.txt"

data=/tmp/fake_cifar100
python3 -c "from kdforge.data import write_fake_cifar as w; w('$data', 'cifar100', num_train=8192, num_test=1024, seed=0)"
timeout 100 python3 -m kdforge train configs/cifar100/kd/resnet32x4_resnet8x4.yaml --set \
  data.root=$data data.num_workers=8 schedule.epochs=3 teacher.pretrained=null \
  train.check_teacher=false train.deterministic=false \
  train.amp=bf16 train.out_dir=/tmp/runs train.name=kd_gpu 2>&1 | tail -n 8 | tee "$out/train.txt"
cp /tmp/runs/kd_gpu/log.jsonl "$out/train_log.jsonl" 2>/dev/null
KDFORGE_INTEROP=1 timeout 90 python3 -m pytest -q -p no:cacheprovider -n 8 tests/interop \
  --ignore=tests/interop/test_trackers.py 2>&1 | tail -n 15 | tee "$out/interop.txt"

timeout 45 python3 benchmarks/roi_align.py --device cuda --repeats 20 --warmup 3 \
  --out "$out/roi_align_cuda.json" 2>&1 | tail -n 12
timeout 45 python3 benchmarks/deform_conv.py --device cuda --repeats 20 --warmup 3 \
  --out "$out/deform_conv_cuda.json" 2>&1 | tail -n 16

nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv | tee "$out/gpu.txt"
