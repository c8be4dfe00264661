#!/usr/bin/env bash
# The CIFAR-100 report's workflow at real size on CIFAR-10, on one GPU, with configs/cifar10.yaml:
# sanity checks and 20 epochs of training (train), the LR finder, the grid search (8 points x 3 epochs),
# and the evaluation of the best checkpoint on the test set. Then every small output (tables, figures,
# CSV/JSON, TensorBoard events, logs, resolved configs; no weights) is packed into ONE archive:
#
#   scripts/toolkit_cifar10_gpu.sh OUTDIR [KEY=VALUE ...]     ->  OUTDIR/toolkit_cifar10.tar.gz
#
# KEY=VALUE overrides go to every command (e.g. `train_limit=2000 max_epochs=1` for a quick try).
# Needs python3 with torch (pyyaml; tensorboard optional), CIFAR-10 under data/ (or $FASTCIFAR_DATA);
# the project need not be installed. Set FASTCIFAR_COMMIT where the copy has no .git.
# Cost, estimated: about 24 grid epochs and 20 training epochs of 45,000 images, plus a 200-step sweep;
# at the ~45,000 img/s a ResNet-18 trains on an H100 that is a few minutes, including data loading.
set -euo pipefail

OUT=${1:?usage: scripts/toolkit_cifar10_gpu.sh OUTDIR [KEY=VALUE ...]}
shift
cd "$(dirname "$0")/.."
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
PYTHON=${PYTHON:-python3}
export PYTHONPATH="$PWD/lib${PYTHONPATH:+:$PYTHONPATH}"
if [ -z "${FASTCIFAR_COMMIT:-}" ] && git rev-parse --short=12 HEAD >/dev/null 2>&1; then
    export FASTCIFAR_COMMIT="$(git rev-parse --short=12 HEAD)$(git diff --quiet HEAD -- 2>/dev/null || echo -dirty)"
fi
RUNS="$OUT/toolkit"
LOGS="$RUNS/logs"
mkdir -p "$LOGS"
CONFIG=configs/cifar10.yaml
COMMON=(--config "$CONFIG" "output_dir=$RUNS" "$@")

pack() {
    # Small files only: checkpoints stay behind, and so does anything over 10 MB.
    local status=$?
    (cd "$OUT" && find toolkit -type f ! -name '*.pth' -size -10M | sort > "$LOGS/packed_files.txt"
     tar -czf toolkit_cifar10.tar.gz.tmp -T "$LOGS/packed_files.txt" && mv toolkit_cifar10.tar.gz.tmp toolkit_cifar10.tar.gz)
    echo "packed $(wc -l < "$LOGS/packed_files.txt") files into $OUT/toolkit_cifar10.tar.gz (exit status $status)"
}
trap pack EXIT

stage() {
    local name=$1
    shift
    local t0=$SECONDS
    echo "=== $name: $*"
    "$PYTHON" -m fastcifar "$@" 2>&1 | tee "$LOGS/$name.log"
    echo "=== $name: $((SECONDS - t0)) s" | tee -a "$LOGS/timings.txt"
}

# Library versions and the device are in each run's run.json; the GPU's own report goes beside them.
{ nvidia-smi || echo "no nvidia-smi"; } > "$LOGS/nvidia-smi.txt" 2>&1
stage train train "${COMMON[@]}"
TRAIN_RUN=$(ls -d "$RUNS"/cifar10/train-* | tail -n 1)
stage lr_finder lr_finder "${COMMON[@]}"
stage grid_search grid_search "${COMMON[@]}"
stage evaluate evaluate "${COMMON[@]}" --checkpoint "$TRAIN_RUN/model_best.pth"
echo "=== total: $SECONDS s" | tee -a "$LOGS/timings.txt"
