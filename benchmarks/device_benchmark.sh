#!/bin/bash
# benchmarks/device_benchmark.py on a GPU machine that cannot download packages.
#
# Such a machine (Python 3.12, jax 0.11, flax, optax, orbax, etils, absl-py, PyYAML,
# tensorboard) lacks ml_collections, which configs/ is written in. Its wheel (pure Python,
# ~80 kB) travels with the repository in .whl/ (git-ignored): fetch it once, on a machine
# with PyPI, from the repository root:
#
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --implementation cp -d .whl ml_collections==1.1.0
#
# then send .whl/ along and run, from the repository root:
#
#   bash benchmarks/device_benchmark.sh [device_benchmark.py flags]
#
# Wheels are installed into /tmp/site (not the system's packages) with no index and no
# dependencies, so nothing already installed is changed.
set -euo pipefail
cd "$(dirname "$0")/.."
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
if ! python3 -c "import ml_collections" 2> /dev/null; then
  echo "ml_collections is missing: put its wheel in .whl/ (see the top of $0) and send it along." >&2
  exit 1
fi
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
exec python3 benchmarks/device_benchmark.py "$@"
