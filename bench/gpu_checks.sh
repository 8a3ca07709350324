#!/bin/bash
# The GPU figures of the README's performance and reproduction sections, in one run (one GPU):
#   1. seconds per epoch of CIFAR-100-LT-sized TADE training (10,847 images, batch 128, 3 experts)
#      with the GPU-resident tensor path (config defaults) against the plain PIL/DataLoader path;
#   2. the full 200-epoch CIFAR-10-LT IR100 TADE recipe through bench/reproduce.py (train, test.py
#      on all eleven distributions, test_train.py), with its wall time;
#   3. if time is left, the defaults with torch.compile.
# usage: bash bench/gpu_checks.sh [OUT_DIR]   (needs CIFAR-10 at $CIFAR_DIR, default .cache/cifar,
# or make_cifar10.py at $MAKER; CIFAR-100 is not available offline, so step 1 uses random pixels in
# the cifar-100-python layout: the timing does not depend on the pixel values)
set -u
OUT=${1:-${OUT:-runs/gpu}}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
BUDGET=${BUDGET:-560}  # seconds this script may take
exec > >(tee -a "$OUT/gpu_log.txt") 2>&1
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
EPOCHS=${EPOCHS:-200}
DATA=${CIFAR_DIR:-.cache/cifar}
step() { echo "== [$SECONDS s] $*"; }

step "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$PY -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, torch.cuda.get_device_name())"
nproc
[ -d "$DATA/cifar-10-batches-py" ] || $PY "${MAKER:-../shared/data/make_cifar10.py}" "$DATA" > /dev/null
$PY -c "import sys; sys.path.insert(0, 'tests'); from helpers import write_cifar100; write_cifar100('.cache/cifar100_random', 500, 100)"

step "1. CIFAR-100-LT-sized epochs: GPU-resident defaults against plain fp32 PIL (2 workers, as configured)"
$PY bench/train_speed.py -c configs/config_cifar100_ir100_tade.json --data_dir .cache/cifar100_random -d $DEVICE \
    --epochs 3 --repeats 1
step "1b. plain path with 8 DataLoader workers"
$PY bench/train_speed.py -c configs/config_cifar100_ir100_tade.json --data_dir .cache/cifar100_random -d $DEVICE \
    --epochs 2 --repeats 1 --only plain --set data_loader.args.num_workers=8

step "2. 200-epoch CIFAR-10-LT IR100 TADE (validation every 50 epochs; test-time loader with 12 workers)"
sed -i 's/"num_workers": 2/"num_workers": 12/' configs/test_time_cifar10_tade.json
REPRO=runs/gpu_repro
timeout $((BUDGET - SECONDS - 30)) $PY bench/reproduce.py --dataset cifar10_ir100 --methods tade --epochs $EPOCHS \
    --data_dir "$DATA" -d $DEVICE --out_dir $REPRO --set trainer.valid_period=50
echo "reproduce exit $?"
RUN=$REPRO/cifar10_ir100/tade/e$EPOCHS
for f in $REPRO/cifar10_ir100/results_e$EPOCHS.md $REPRO/cifar10_ir100/reproduce.log $RUN/info.log $RUN/last.pth \
         $RUN/eval_last.json $RUN/test_time_last.json $RUN/test_time_last.png; do
    [ -f "$f" ] && cp "$f" "$OUT/"
done

if [ $((BUDGET - SECONDS)) -gt 100 ]; then
    step "3. defaults with torch.compile"
    timeout $((BUDGET - SECONDS - 5)) $PY bench/train_speed.py -c configs/config_cifar100_ir100_tade.json \
        --data_dir .cache/cifar100_random -d $DEVICE --epochs 4 --repeats 1 --only defaults --set trainer.compile=true
fi
step "done"
