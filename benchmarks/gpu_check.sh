#!/usr/bin/env bash
# The checks that need a CUDA GPU, in one short run (about 5 minutes on one H100/H200):
# formats on CUDA, a cell trained under torchrun (NCCL process group, bf16 autocast, torch.compile),
# fake-quant overhead on the GPU, and MFU of the 100m preset in bf16.
#   benchmarks/gpu_check.sh [OUT_DIR]
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-/tmp/gpu_check}}
mkdir -p "$out"
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD PYTHONUNBUFFERED=1
python=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/device.txt"
$python -c "import torch; print('torch', torch.__version__, 'nccl', torch.cuda.nccl.version())" | tee -a "$out/device.txt"

echo "== formats on CUDA (tests marked gpu)"
timeout 120 $python -m pytest -q -p no:cacheprovider -m gpu tests/test_formats.py 2>&1 | tail -4 | tee "$out/formats_gpu.txt"

echo "== one cell under torchrun: NCCL, bf16, torch.compile"
cat > "$out/cell.yaml" <<'YAML'
model: tiny
format: sp50+int4
tokens: 4194304
seed: 0
train: {batch_size: 64, precision: bf16, compile: true, checkpoint_every: 20, eval_tokens: 262144}
YAML
timeout 150 torchrun --standalone --nproc_per_node=1 -m orchestrator.cli train-cell "$out/cell.yaml" \
    --store "$out/store" 2>&1 | tail -6 | tee "$out/train_cell.txt"

echo "== throughput: run_cell vs bare loop, format overhead, MFU of 100m bf16"
timeout 240 $python benchmarks/worker_throughput.py --device cuda --model 30m --seq-len 1024 \
    --batch 16 --steps 40 --warmup 10 --formats dense int4 int4-had fp4 sp50+int4 2>&1 \
    | tee "$out/throughput.txt"
