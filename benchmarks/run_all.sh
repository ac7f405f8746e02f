#!/usr/bin/env bash
# Regenerates every number of the README's Performance section.
#
#   bash benchmarks/run_all.sh [OUT_DIR]        (default benchmarks/results)
#
# Run it on a quiet machine: timings move with the load of other jobs (each
# JSON file records the load average at its end; `uptime` is printed at the
# start and the end). Budget: about 20 minutes on 2 cores, most of it XLA
# compiles (one per point) and the bench size (~10-15 s per step on 2 cores,
# for mmjax and for Hugging Face). Each script also runs alone; see its
# docstring for the flags.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-benchmarks/results}"
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1
PY="${PYTHON:-python}"
echo "== start $(date) $(uptime)"
# Figures from one kind of CPU are not comparable with another's: the CPU
# model and its AVX-512 flags go beside every table (each JSON file also
# records them under "cpu"), and docs/performance.md keeps a table per kind.
$PY -c "from benchmarks import common as c; i = c.cpu_info(); \
print('== ' + c.cpu_line()); print('   simd flags: ' + ' '.join(i['simd']))" |
  tee "$OUT/cpu.txt"

echo "== matmul peaks (XLA and torch, f32)"
$PY benchmarks/matmul_peak.py --sizes=512,1024,2048 --out="$OUT/matmul_peak.json"

echo "== train step vs Hugging Face LLaVA (2 torch threads): tiny, small"
echo "   (3 runs in fresh processes: a process can run slow for its life)"
$PY benchmarks/train_throughput.py --sizes=tiny,small --steps=20 --runs=3 \
    --out="$OUT/train_tiny_small.json"
echo "== the same with 1 torch thread (HF without OpenMP thread overhead)"
$PY benchmarks/train_throughput.py --sizes=tiny,small --steps=20 \
    --hf_threads=1 --out="$OUT/train_tiny_small_hf1.json"
echo "== mmjax data parallel over 2 host devices (one per core) vs HF"
$PY benchmarks/train_throughput.py --sizes=tiny,small --steps=20 \
    --host_devices=2 --out="$OUT/train_tiny_small_2dev.json"
echo "== bench size (compute-bound) vs Hugging Face"
$PY benchmarks/train_throughput.py --sizes=bench --steps=3 \
    --out="$OUT/train_bench.json"

echo "== the train step's kernels: where the time that is not matmul goes"
$PY benchmarks/step_profile.py --sizes=tiny,small --out="$OUT/step_profile.json"

echo "== the step's matmuls one by one, XLA vs torch; the floor under the step"
$PY benchmarks/step_matmuls.py --sizes=tiny,small \
    --out="$OUT/step_matmuls.json"

echo "== the other paradigms (tiny)"
$PY benchmarks/train_throughput.py --sizes=tiny --nohf --steps=20 \
    --fusions=resampler,qformer,cross_attention,one_backbone \
    --out="$OUT/train_paradigms.json"

echo "== scaling: visual tokens, text length, batch (tiny); fsdp memory"
$PY benchmarks/scaling.py --sections=visual,text,batch --sizes=tiny \
    --steps=5 --out="$OUT/scaling.json"
$PY benchmarks/scaling.py --sections=fsdp --fsdp_sizes=small,bench \
    --out="$OUT/scaling_fsdp.json"
$PY benchmarks/scaling.py --sections=fsdp --fsdp_sizes=bench --scan_layers \
    --out="$OUT/scaling_fsdp_scan.json"

# Other work's benchmarks: generation vs HF, the grpo rollout, evaluation
# throughput and the sigmoid-loss memory.
if [[ -f benchmarks/generate_vs_hf.py ]]; then
  echo "== generation vs Hugging Face"
  $PY benchmarks/generate_vs_hf.py --sizes=tiny,small,bench \
      --out="$OUT/generate_vs_hf.json" ||
    echo "generate_vs_hf.py failed (exit $?)"
fi
if [[ -f benchmarks/grpo_rollout.py ]]; then
  echo "== grpo rollout vs plain generation; grpo step and update (tiny, small)"
  $PY benchmarks/grpo_rollout.py --sizes=tiny,small --repeats=5 \
      --out="$OUT/grpo_rollout.json" ||
    echo "grpo_rollout.py failed (exit $?)"
fi
if [[ -f benchmarks/eval_throughput.py ]]; then
  echo "== evaluation throughput vs Hugging Face"
  $PY benchmarks/eval_throughput.py --eval_sizes=tiny,small \
      --eval_out="$OUT/eval_throughput.json" ||
    echo "eval_throughput.py failed (exit $?)"
fi
if [[ -f benchmarks/sigmoid_memory.py ]]; then
  echo "== chunked vs plain sigmoid loss memory"
  $PY benchmarks/sigmoid_memory.py > "$OUT/sigmoid_memory.txt" ||
    echo "sigmoid_memory.py failed (exit $?)"
fi
echo "== done $(date) $(uptime); results in $OUT"
