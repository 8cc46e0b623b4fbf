#!/usr/bin/env bash
# Sets up a bare GPU machine from carried wheels and runs every GPU benchmark (benchmarks/gpu.py).
#
#   bash benchmarks/gpu_run.sh OUT_DIR [gpu.py arguments...]
#
# Expects, in the repository root, the wheels that `bash benchmarks/gpu_wheels.sh` downloads:
# .whl/*.whl (datasets, ml-collections and their missing needs), .whl/flax/ (our pinned flax),
# .whl/trl112/ and .whl/trl116/ (the PPO and the Reward/DPO/SFT peers). The machine's own jax,
# torch and transformers are used as they are.
set -u
out=${1:?OUT_DIR}
shift
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
pipi() { python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$@"; }
pipi /tmp/site .whl/*.whl || exit 1
pipi /tmp/flax .whl/flax/*.whl || exit 1
pipi /tmp/trl112 .whl/trl112/*.whl || exit 1
pipi /tmp/trl116 .whl/trl116/*.whl || exit 1
export PYTHONPATH=$root:/tmp/site PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export BENCH_PYTHONPATH_TRL=/tmp/trl116 BENCH_PYTHONPATH_TRL112=/tmp/trl112
# JAX's persistent compilation cache, in an ignored folder of the checkout: the device machine
# keeps ignored files between calls while it stays warm, so a rerun after a timeout reuses every
# program the killed run finished compiling (the Qwen2-0.5B PPO programs take minutes).
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-$root/.jax-cache}
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
python3 -c "import jax, torch, transformers; print('jax', jax.__version__, jax.devices(), 'torch', torch.__version__, 'transformers', transformers.__version__)"
# The machine's own flax first (its image pairs it with its jax: flax 0.12.10 with jax 0.11.2);
# our pinned flax if that one does not run (flax 0.12.8 does not import under jax 0.11.2).
if python3 benchmarks/gpu.py --smoke; then
  :
elif PYTHONPATH=/tmp/flax:$PYTHONPATH python3 benchmarks/gpu.py --smoke; then
  export PYTHONPATH=/tmp/flax:$PYTHONPATH
else
  echo "neither flax runs with this jax" >&2
  exit 1
fi
python3 benchmarks/gpu.py --out "$out" "$@"
