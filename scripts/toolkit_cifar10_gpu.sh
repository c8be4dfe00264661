#!/usr/bin/env bash
# The CIFAR-100 report's workflow at real size on CIFAR-10, on one GPU, from configs/cifar10.yaml: the
# LR finder, the grid search (8 points x 3 epochs), then `train` with the grid's best point (sanity
# checks, 20 epochs), then the evaluation of its best checkpoint on the test set. Every small output (tables, figures,
# CSV/JSON, TensorBoard events, logs, resolved configs; no weights) is packed into ONE archive, the only
# file written to OUTDIR; it is re-packed after each stage, so a run cut short keeps the finished stages:
#
#   scripts/toolkit_cifar10_gpu.sh OUTDIR [KEY=VALUE ...]     ->  OUTDIR/toolkit_cifar10.tar.gz
#
# The runs themselves (checkpoints included) go to $TOOLKIT_WORK (default: a new folder under /tmp).
# Unpacked with `tar -xzf toolkit_cifar10.tar.gz -C outputs/`, the runs land in outputs/toolkit/cifar10/.
# KEY=VALUE overrides go to every command (e.g. `train_limit=2000 max_epochs=1` for a quick try), except
# that training keeps the lr, weight_decay, blocks and widths the grid chose.
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
WORK=${TOOLKIT_WORK:-$(mktemp -d /tmp/toolkit_cifar10.XXXXXX)}
mkdir -p "$WORK"
RUNS="$WORK/toolkit"
LOGS="$RUNS/logs"
mkdir -p "$LOGS"
CONFIG=configs/cifar10.yaml
COMMON=(--config "$CONFIG" "output_dir=$RUNS" "$@")

pack() {
    # Small files only: checkpoints stay behind, and so does anything over 10 MB. Written beside, then
    # renamed: the archive is always whole.
    (cd "$WORK" && find toolkit -type f ! -name '*.pth' -size -10M | sort > "$LOGS/packed_files.txt"
     tar -czf "$OUT/.toolkit_cifar10.tar.gz.tmp" -T "$LOGS/packed_files.txt")
    mv "$OUT/.toolkit_cifar10.tar.gz.tmp" "$OUT/toolkit_cifar10.tar.gz"
    echo "packed $(wc -l < "$LOGS/packed_files.txt") files into $OUT/toolkit_cifar10.tar.gz"
}
trap 'status=$?; pack; echo "exit status $status; runs in $RUNS"' EXIT

stage() {
    local name=$1
    shift
    local t0=$SECONDS
    echo "=== $name: $*"
    "$PYTHON" -m fastcifar "$@" 2>&1 | tee "$LOGS/$name.log"
    echo "=== $name: $((SECONDS - t0)) s" | tee -a "$LOGS/timings.txt"
    pack
}

# Library versions and the device are in each run's run.json; the GPU's own report goes beside them.
{ nvidia-smi || echo "no nvidia-smi"; } > "$LOGS/nvidia-smi.txt" 2>&1
stage lr_finder lr_finder "${COMMON[@]}"
stage grid_search grid_search "${COMMON[@]}"
GRID_RUN=$(ls -d "$RUNS"/cifar10/grid_search-* | tail -n 1)
# The grid chose on validation accuracy; its best_config.yaml is the whole config with that point, and
# the keys the grid chose keep their chosen values over the overrides given to this script.
TRAIN_OVERRIDES=()
for arg in "$@"; do
    case "$arg" in lr=*|weight_decay=*|blocks=*|widths=*) ;; *) TRAIN_OVERRIDES+=("$arg") ;; esac
done
stage train train --config "$GRID_RUN/best_config.yaml" "output_dir=$RUNS" ${TRAIN_OVERRIDES[@]+"${TRAIN_OVERRIDES[@]}"}
TRAIN_RUN=$(ls -d "$RUNS"/cifar10/train-* | tail -n 1)
stage evaluate evaluate --config "$TRAIN_RUN/config.yaml" --checkpoint "$TRAIN_RUN/model_best.pth"
echo "=== total: $SECONDS s" | tee -a "$LOGS/timings.txt"
