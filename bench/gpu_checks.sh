#!/bin/bash
# The GPU figures of docs/performance.md and docs/results.md, in one run (one GPU):
#   0. tests/test_cuda_graph.py and DirMixE's graph test in tests/test_dirmixe.py (graph replays equal
#      eager steps; need CUDA);
#   1. seconds per epoch of CIFAR-100-LT-sized TADE training (10,847 images, batch 128, 3 experts):
#      config defaults (GPU-resident tensor path, bf16, channels_last, CUDA-graph steps) against the
#      plain PIL/DataLoader fp32 path, then the defaults with eager steps (trainer.cuda_graph=false),
#      and bench/speed/speed.py ceiling (bare step against the GPU's matrix-product rate);
#   2. the full 200-epoch CIFAR-10-LT IR100 TADE recipe recorded by bench/records/record.py (train, test.py
#      on all eleven distributions, every test-time method), with its wall time;
#   3. bench/speed/speed.py test-time on the trained model (speed ratio and learned weights).
# usage: bash bench/gpu_checks.sh [OUT_DIR]   (needs CIFAR-10 at $CIFAR_DIR, default .cache/cifar,
# or a script at $MAKER that writes it, else torchvision downloads it; CIFAR-100 is not available
# offline, so step 1 uses random pixels in
# the cifar-100-python layout: the timing does not depend on the pixel values)
set -u
OUT=${1:-${OUT:-runs/gpu}}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
BUDGET=${BUDGET:-520}  # seconds this script may take
exec > >(tee -a "$OUT/gpu_log.txt") 2>&1
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
EPOCHS=${EPOCHS:-200}
DATA=${CIFAR_DIR:-.cache/cifar}
C100=configs/config_cifar100_ir100_tade.json
step() { echo "== [$SECONDS s] $*"; }

step "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$PY -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, torch.cuda.get_device_name())"
nproc
[ -d "$DATA/cifar-10-batches-py" ] || CIFAR10_MAKER=${MAKER:-} $PY -c \
    "import sys; sys.path.insert(0, 'bench'); from common import ensure_cifar10; ensure_cifar10('$DATA')" > /dev/null
$PY -c "import sys; sys.path.insert(0, 'tests'); from helpers import write_cifar100; write_cifar100('.cache/cifar100_random', 500, 100)"

step "0. CUDA-graph tests"
timeout 120 $PY -m pytest -q -p no:cacheprovider tests/test_cuda_graph.py 2>&1 | tail -15
timeout 120 $PY -m pytest -q -p no:cacheprovider tests/test_dirmixe.py -k graph 2>&1 | tail -5

step "1. CIFAR-100-LT-sized epochs: defaults (CUDA graphs) against plain fp32 PIL (2 workers, as configured)"
timeout 120 $PY bench/speed/speed.py train -c $C100 --data_dir .cache/cifar100_random -d $DEVICE --epochs 3 --repeats 1
step "1b. defaults with eager steps"
timeout 60 $PY bench/speed/speed.py train -c $C100 --data_dir .cache/cifar100_random -d $DEVICE --epochs 2 --repeats 1 \
    --only defaults --set trainer.cuda_graph=false

step "1c. the bare training step against the GPU's matrix-product rate"
timeout 60 $PY bench/speed/speed.py ceiling -c $C100 -d $DEVICE 2>&1 | grep -v "^USDT\|^ERROR"

step "2. $EPOCHS-epoch CIFAR-10-LT IR100 TADE, recorded (bench/records/record.py: train, test.py, every test-time method)"
# The record lands in $OUT/results/NAME (copy it into the repository's results/ and run bench/records/report.py).
NAME=cifar10_ir100_tade_e${EPOCHS}_s1
timeout $((BUDGET - SECONDS - 50)) $PY bench/records/record.py -c configs/config_cifar10_ir100_tade.json --epochs $EPOCHS \
    --seed 1 --data_dir "$DATA" -d $DEVICE --set trainer.valid_period=50 --work_dir runs/gpu_records \
    --results_dir "$OUT/results" --name $NAME
echo "record exit $?"
RUN=runs/gpu_records/$NAME/train
cp runs/gpu_records/$NAME/record.log "$OUT/" 2>/dev/null

if [ -f $RUN/last.pth ] && [ $((BUDGET - SECONDS)) -gt 30 ]; then
    step "3. test-time aggregation speed and weights on the trained model"
    timeout $((BUDGET - SECONDS - 5)) $PY bench/speed/speed.py test-time --checkpoint $RUN/last.pth --data_dir "$DATA" \
        -d $DEVICE 2>&1 | tr "\r" "\n" | grep -v "it/s\]"
fi
step "done"
