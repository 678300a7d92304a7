#!/usr/bin/env bash
# The GPU benchmarks for one lease of a GPU machine, in one command of at most BUDGET seconds
# (default 540: a device call may run 600 s, and a session has 15 minutes of device time in all,
# machine start included). The items run in the order of the open GPU targets; each runs
# under a timeout of the time left, and an item whose estimate no longer fits is skipped (and says
# so). step_time and epoch_time write their JSON after each row, so a cut keeps what was measured.
# Run from the repository root; results go to benchmarks/results/ (and to $OUT when set).
#   bash benchmarks/gpu_suite.sh h100
#   BUDGET=300 bash benchmarks/gpu_suite.sh h100     # a shorter lease: the first items only
#   DRY_RUN=1 bash benchmarks/gpu_suite.sh h100      # print the commands (tests/test_benchmarks.py)
set -u
tag=${1:-gpu}
budget=${BUDGET:-540}
py=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
start=$SECONDS
dry_used=0 # a dry run counts each printed item's estimate as spent, to show what would be skipped

# item ESTIMATE_S [VAR=value ...] command...: run it if ESTIMATE_S still fits in the budget.
item() {
  local est=$1 left
  shift
  left=$((budget - (SECONDS - start) - dry_used))
  if ((left < est)); then
    echo "SKIPPED (needs ~${est} s, ${left} s left): $*"
    return
  fi
  echo "+ $*"
  if [ -n "${DRY_RUN:-}" ]; then
    dry_used=$((dry_used + est))
    return
  fi
  timeout "$left" env "$@" || echo "FAILED or cut by the budget (exit $?): $*"
}

if [ -z "${DRY_RUN:-}" ]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  $py -c "import jax, flax, optax, orbax.checkpoint as o; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, 'orbax', o.__version__, jax.devices())"
fi
# Whole on-device epoch vs step loop at batch 100 (target: scan at least 3x the loop).
item 130 $py -m benchmarks.epoch_time --tag "$tag" --num-classes 100 --modes scan,loop
# The same scanned epoch with the scan's while loop in a CUDA graph too: the step is
# launch-bound at these sizes (untried so far; XLA's default leaves loops out of the graphs).
item 65 XLA_FLAGS=--xla_gpu_enable_command_buffer=+WHILE,+CONDITIONAL \
  $py -m benchmarks.epoch_time --tag "$tag-cmdbuf-while" --num-classes 100 --modes scan
# The same scanned epoch with G's noisy batch and clean half in one ResNet pass
# (method.joint_lower_pass): 3 passes per step instead of 5, for a launch-bound GPU.
item 65 $py -m benchmarks.epoch_time --tag "$tag-joint" --method ebomlc-paper-joint --num-classes 100 \
  --modes scan
# A full run (epochs + evaluation + checkpoints), 3 epochs extrapolated to 120 (target: 5 min).
item 110 $py -m benchmarks.full_run --tag "$tag" --num-classes 100 --epochs 3
# Step times of CE and EBOMLC (the EBOMLC / CE ratio; the other methods were measured before).
item 80 $py -m benchmarks.step_time --tag "$tag" \
  --methods ce,ebomlc-paper,ebomlc-paper-noisy-G,ebomlc-paper-joint --rounds 3 --repeats 10 --warmup 5
# Three seeds in one program (target: under 1.5x one seed; compare with the scan row above).
# Estimates are from the H100 runs of 2026-11-25 (compilation included); at the default budget
# the seeds (map ~3x, vmap 4.0x one seed then) are what is left out.
item 100 $py -m benchmarks.epoch_time --tag "$tag-seeds-map" --num-classes 100 --modes scan \
  --seeds 3 --seeds-mode map
item 130 $py -m benchmarks.epoch_time --tag "$tag-seeds" --num-classes 100 --modes scan --seeds 3
if [ -n "${OUT:-}" ] && [ -z "${DRY_RUN:-}" ]; then
  cp benchmarks/results/*"$tag"* "$OUT"/ 2>/dev/null
fi
echo "suite: $((SECONDS - start + dry_used)) s of a ${budget} s budget"
