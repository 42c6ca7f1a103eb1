#!/usr/bin/env bash
# Download the wheels benchmarks/gpu_check.sh installs on a GPU machine that has torch, numpy,
# pandas, pyarrow, scipy, pyyaml, rich, matplotlib, tabulate and tokenizers but no package index:
# Ray (pinned in docker/RAY_VERSION) and what its core needs beyond those, pydantic and its parts.
# Versions are the ones this venv runs the tests with; wheels are CPython 3.12, manylinux x86_64.
# Ray's wheel is repacked without what compscale never imports (ray/jars/ for Java workers, ~40%
# of it; RLlib, Serve, ray.llm and the dashboard's web client) and with its RECORD fixed, so the
# folder plus the working tree fits the device tool's 64 MiB carry.
#   benchmarks/gpu_wheels.sh [DIR]       # default: wheels/ (gitignored); prints the total size
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-wheels}
python=${PYTHON:-.venv/bin/python}
packages=(ray pydantic pydantic_core annotated_types typing_inspection typing_extensions
    jsonschema jsonschema_specifications referencing rpds_py packaging)
pins=()
for name in "${packages[@]}"; do
    if [ "$name" = ray ]; then version=$(cat docker/RAY_VERSION); else
        version=$($python -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name")
    fi
    pins+=("${name//_/-}==$version")
done
rm -rf "$dir" && mkdir -p "$dir"
platforms=()
for tag in manylinux_2_28 manylinux_2_27 manylinux_2_17 manylinux2014 manylinux1; do
    platforms+=(--platform "${tag}_x86_64")
done
$python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" -d "$dir" "${pins[@]}"

# Repack Ray without those parts; pip checks RECORD's hashes, so their lines go from it too.
$python - "$dir"/ray-*.whl <<'PY'
import sys
import zipfile
from pathlib import Path

unused = ("ray/jars/", "ray/rllib/", "ray/serve/", "ray/llm/", "ray/dashboard/client/")
wheel = Path(sys.argv[1])
stripped = wheel.with_suffix(".tmp")
with zipfile.ZipFile(wheel) as source, zipfile.ZipFile(stripped, "w", zipfile.ZIP_DEFLATED) as out:
    for item in source.infolist():
        if item.filename.startswith(unused):
            continue
        data = source.read(item)
        if item.filename.endswith(".dist-info/RECORD"):
            lines = data.decode().splitlines(keepends=True)
            data = "".join(line for line in lines if not line.startswith(unused)).encode()
        out.writestr(item, data)
stripped.replace(wheel)
PY
ls -1 "$dir"
echo "total: $(du -cb "$dir"/*.whl | tail -1 | cut -f1) bytes ($(du -sh "$dir" | cut -f1)) in $dir"
