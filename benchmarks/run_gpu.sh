#!/usr/bin/env bash
# The GPU rows of README "Performance": the ~1B config (benchmarks/common.py
# SIZES['1b']) in bfloat16 on one NVIDIA GPU, mmjax beside Hugging Face LLaVA
# (torch autocast bf16), MFU against the bf16 matmul peak measured in the same
# run (square 4096 and 8192 products); then generation, both sides in bf16.
#
#   bash benchmarks/run_gpu.sh [OUT_DIR] [BATCHES]   # runs/bench_gpu "8 32 64"
#
# For each batch: mmjax with its einsum attention and with cuDNN flash
# attention (--attention=cudnn); HF timed in the einsum run. A JSON and a log
# per run in OUT_DIR; each run has a 300 s limit so one failure leaves the
# others.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/bench_gpu}
batches=${2:-"8 32 64"}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm \
  --format=csv,noheader || echo "nvidia-smi: not found"
python3 -c "import jax, flax, torch, transformers; print('jax', jax.__version__,
  'flax', flax.__version__, 'torch', torch.__version__, 'transformers',
  transformers.__version__, jax.devices())"
quiet() { grep -v "^[WI][0-9]\{4\} "; }
common=(--sizes=1b --dtype=bfloat16 --hf_device=cuda --steps=10 --warmup=2
        --peak_sizes=4096,8192)
for b in $batches; do
  for attn in einsum cudnn; do
    hf=false; [ "$attn" = einsum ] && hf=true
    echo "== train step: batch $b, attention $attn, hf $hf"
    timeout 300 python3 benchmarks/train_throughput.py "${common[@]}" \
      --batch="$b" --attention="$attn" --hf="$hf" \
      --out="$out/train_b${b}_${attn}.json" 2>&1 | quiet \
      | tee "$out/train_b${b}_${attn}.log"
  done
done
echo "== generation: 1b, batch 8, 64 new tokens, bf16"
# JAX and torch share this process's GPU: JAX takes half instead of 75%.
XLA_PYTHON_CLIENT_MEM_FRACTION=0.5 timeout 300 python3 \
  benchmarks/generate_vs_hf.py --sizes=1b --dtype=bfloat16 --hf_device=cuda \
  --out="$out/generate_1b.json" 2>&1 | quiet | tee "$out/generate_1b.log"
