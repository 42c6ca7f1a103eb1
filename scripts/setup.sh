#!/usr/bin/env bash
# Create (or reuse) the repo's virtual environment and install compscale into it.
# Installs torch's CPU build first where no torch is present, so pip never pulls the CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    .venv/bin/pip install --quiet "torch==2.13.0"
fi
# Ray is pinned in one place, docker/RAY_VERSION, for this venv and the GPU image alike.
stamp=.venv/.compscale-installed
want=$(cat pyproject.toml docker/RAY_VERSION | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    constraints=$(mktemp)
    echo "ray==$(cat docker/RAY_VERSION)" > "$constraints"
    PIP_CONSTRAINT="$constraints" .venv/bin/pip install --quiet -e '.[dev]'
    rm -f "$constraints"
    echo "$want" > "$stamp"
fi
