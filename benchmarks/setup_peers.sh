#!/usr/bin/env bash
# Virtualenvs for the peer frameworks that cannot share the project's .venv.
#
#   bash benchmarks/setup_peers.sh            # both
#   bash benchmarks/setup_peers.sh trl112     # trl 1.12.0 (trl.experimental.ppo.PPOTrainer)
#   bash benchmarks/setup_peers.sh tunix      # google-tunix 0.1.7 (pins older transformers)
#
# trl 1.16 (Reward/DPO/SFT trainers) installs into the project's own .venv through the `bench`
# extra: `.venv/bin/pip install -e '.[bench]'`.
#
# torch==2.13.0 goes in first in each venv so that pip resolves the CPU wheel rather than
# pulling a CUDA build as a dependency of trl/tunix.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

make_venv() {
  local dir=$1
  shift
  if [[ ! -x "$dir/bin/python" ]]; then
    "$PYTHON" -m venv "$dir"
  fi
  "$dir/bin/pip" install -q --upgrade pip
  "$dir/bin/pip" install -q "torch==2.13.0"
  "$dir/bin/pip" install -q "$@"
  "$dir/bin/python" -c "import torch, sys; print(sys.argv[1], 'torch', torch.__version__)" "$dir"
}

want=${1:-all}
if [[ $want == all || $want == trl112 ]]; then
  make_venv .venv-trl112 "trl==1.12.0"
  .venv-trl112/bin/python -c "import trl, transformers; print('trl', trl.__version__, 'transformers', transformers.__version__)"
fi
if [[ $want == all || $want == tunix ]]; then
  # The benchmark script imports rlhf_jax only through the shared helpers it needs (numpy),
  # so the project itself is not installed here: tunix's pins stay as tunix wants them.
  make_venv .venv-tunix "google-tunix==0.1.7"
  .venv-tunix/bin/python -c "import tunix, jax, flax, transformers; print('tunix', jax.__version__, flax.__version__, transformers.__version__)"
fi
