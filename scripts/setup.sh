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
stamp=.venv/.compscale-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    .venv/bin/pip install --quiet -e '.[dev]'
    echo "$want" > "$stamp"
fi
