#!/usr/bin/env bash
# The GPU benchmarks in one go (one lease of a GPU machine): versions, step times, scan vs loop,
# seeds (vmap and map), a short full run. Results go to benchmarks/results/ (and $OUT when set).
#   bash benchmarks/gpu_suite.sh h100
set -u
tag=${1:-gpu}
export PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
$py -c "import jax, flax, optax, orbax.checkpoint as o; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, 'orbax', o.__version__, jax.devices())"
timeout 240 $py -m benchmarks.step_time --tag "$tag" --repeats 30 --warmup 5 || echo "step_time failed or timed out"
timeout 150 $py -m benchmarks.epoch_time --tag "$tag" --num-classes 100 --modes scan,loop || echo "epoch_time failed"
timeout 150 $py -m benchmarks.epoch_time --tag "$tag-seeds" --num-classes 100 --modes scan --seeds 1,3 || echo "seeds failed"
timeout 150 $py -m benchmarks.epoch_time --tag "$tag-seeds-map" --num-classes 100 --modes scan --seeds 1,3 --seeds-mode map || echo "seeds map failed"
if [ -n "${OUT:-}" ]; then cp benchmarks/results/*"$tag"* "$OUT"/ 2>/dev/null; fi
