#!/usr/bin/env bash
# Downloads the wheels benchmarks/gpu_run.sh installs on a bare GPU machine (Python 3.12,
# x86-64) into .whl/ (git-ignored): what the machine's image lacks, our pinned flax, and TRL.
set -eu
cd "$(dirname "$0")/.."
get() {
  dest=$1
  shift
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$dest" "$@"
}
get .whl datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 ml_collections==1.1.0 \
  tensorboardX==2.6.5
get .whl/flax flax==0.12.8
get .whl/trl112 trl==1.12.0
get .whl/trl116 trl==1.16.0
