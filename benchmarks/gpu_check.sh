#!/usr/bin/env bash
# The checks that need a CUDA GPU, in one call of under 5 minutes on one H100/H200:
#  1. a cut of sweeps/gpu-mini.yaml (40 cells, 8 per GPU, bf16, WSD ladders) through the real
#     driver: `compscale submit` on the embedded local Ray;
#  2. one cell under torchrun (world size 1, NCCL);
#  3. fake-quant step time over dense, run_cell vs a bare loop, MFU of the 100m preset in bf16;
#  4. the format tests marked gpu.
# It first installs Ray and pydantic from wheels/ (benchmarks/gpu_wheels.sh fetches them where pip
# reaches PyPI) when they are not importable. Everything lands in OUT_DIR, at most 8 files for the
# device tool: gpu-mini.md (for docs/results/gpu-mini.md), gpu_check.log, cells.csv, the cut's YAML.
# CPU=1 rehearses the same steps on a CPU with tiny sizes (gloo instead of NCCL, no MFU).
#   benchmarks/gpu_check.sh [OUT_DIR]          # OUT_DIR: default $OUT, else /tmp/gpu_check
#   CPU=1 benchmarks/gpu_check.sh /tmp/rehearsal
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-/tmp/gpu_check}}
cpu=${CPU:-0}
work=$(mktemp -d /tmp/gpu_check_work.XXXXXX)  # step logs and the store: too many files for OUT
store=$work/store
python=${PYTHON:-python3}
mkdir -p "$out"
exec > >(tee "$out/gpu_check.log") 2>&1
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1

die() { echo "gpu_check: $*" >&2; exit 1; }

# step NAME SECONDS COMMAND...: run it under a timeout, its output to $work/NAME.txt and the log,
# and append (name, exit status, seconds) to $work/steps.tsv; a failed step does not stop the rest.
# limit GPU_SECONDS CPU_SECONDS: a step's cap; the CPU rehearsal's are looser (a loaded machine).
limit() { if [ "$cpu" = 1 ]; then echo "$2"; else echo "$1"; fi; }

step() {
    local name=$1 limit=$2 started=$SECONDS rc
    shift 2
    echo "== $name (at most ${limit}s): $*"
    timeout -k 10 "$limit" "$@" 2>&1 | tee "$work/$name.txt"
    rc=${PIPESTATUS[0]}
    printf '%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - started))" >>"$work/steps.tsv"
}

echo "== prerequisites"
$python -c "import torch" 2>/dev/null || die "$python has no torch (set PYTHON=)"
if ! $python -c "import ray, pydantic" 2>/dev/null; then
    ls wheels/ray-*.whl >/dev/null 2>&1 || die "no ray/pydantic and no wheels/: run benchmarks/gpu_wheels.sh and carry wheels"
    # Into the image's environment, resolving against what it holds; where that fails (a package
    # there too old, or not writable), the wheels alone into a folder put ahead on PYTHONPATH.
    $python -m pip install -q --no-index --no-cache-dir --find-links wheels \
        "ray==$(cat docker/RAY_VERSION)" pydantic \
        || { echo "gpu_check: installing wheels/*.whl with --no-deps into $work/site instead"
            $python -m pip install -q --no-index --no-cache-dir --no-deps --target "$work/site" \
                wheels/*.whl || die "pip could not install from wheels/ (see above)"
            export PYTHONPATH=$PYTHONPATH:$work/site; }
fi
$python -c "import ray, pydantic, yaml, pandas, pyarrow, scipy, tabulate" \
    || die "a package compscale needs is missing (see the ImportError above)"
if [ "$cpu" = 1 ]; then
    echo "cpu x$(nproc): rehearsal (CPU=1)" | tee "$work/device.txt"
    $python -c "import torch, sys; sys.exit(torch.cuda.is_available())" \
        || die "CPU=1 on a machine with CUDA: worker_throughput.py refuses --device cpu there"
else
    command -v nvidia-smi >/dev/null || die "no nvidia-smi: no GPU here (CPU=1 rehearses on a CPU)"
    $python -c "import torch, sys; sys.exit(not torch.cuda.is_available())" \
        || die "torch sees no CUDA device"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >"$work/device.txt"
fi
$python -c "import torch, ray; print('torch', torch.__version__, 'ray', ray.__version__, 'nccl',
    torch.cuda.nccl.version() if torch.cuda.is_available() else '-')" | tee -a "$work/device.txt"

cut=$out/gpu-mini-cut.yaml
$python benchmarks/gpu_check.py cut $([ "$cpu" = 1 ] && echo --cpu) "$cut" || die "could not write the cut"
$python -m orchestrator.cli validate "$cut" || die "the cut does not validate"

step sweep "$(limit 150 300)" $python -m orchestrator.cli submit "$cut" --store "$store"

if [ "$cpu" = 1 ]; then
    cell='{model: tiny, format: sp50+int4, tokens: 65536, seed: 0, train: {batch_size: 8, precision: fp32, compile: false, eval_tokens: 16384}}'
else
    cell='{model: tiny, format: sp50+int4, tokens: 2097152, seed: 0, train: {batch_size: 64, precision: bf16, compile: false, eval_tokens: 262144}}'
    export NCCL_DEBUG=INFO  # NCCL prints its version and transport: proof that it, not gloo, ran
fi
echo "$cell" >"$work/cell.yaml"
step train_cell "$(limit 45 240)" $python -m torch.distributed.run --standalone --nproc_per_node=1 \
    -m orchestrator.cli train-cell "$work/cell.yaml" --store "$work/cell_store"
unset NCCL_DEBUG

if [ "$cpu" = 1 ]; then
    step throughput 300 $python benchmarks/worker_throughput.py --device cpu --model tiny \
        --seq-len 64 --batch 4 --steps 12 --warmup 2 --formats dense int4
else
    step throughput 150 $python benchmarks/worker_throughput.py --device cuda --model 30m \
        --seq-len 1024 --batch 16 --steps 30 --warmup 8 \
        --mfu-batch 128 256 --formats dense int4 int4-had fp4 sp50+int4 "w:int4,a:int4"
fi

step formats_gpu 30 $python -m pytest -q -p no:cacheprovider -m gpu tests/compscale/test_formats.py

$python benchmarks/gpu_check.py summary "$work" "$store" "$out/gpu-mini.md" || die "no summary"
column -t "$work/steps.tsv" 2>/dev/null || cat "$work/steps.tsv"
echo "gpu_check: done in ${SECONDS}s; $out/gpu-mini.md"
