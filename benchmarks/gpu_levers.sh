#!/usr/bin/env bash
# Every speed lever of issue 28 on one GPU, in under 8 minutes: SD 1.5's UNet and VAE shape with random weights at
# 512 px, 10 classes, 20 ELBO + 10 attention timesteps (benchmarks/bench_aligner.py --arch sd15-random --compare).
#
#   bash benchmarks/gpu_levers.sh              # results in $OUT if set, else benchmarks/results/levers-<date>/
#
# Two runs, each against the same baseline (fp16 denoiser, VAE fp32, SDPA ELBO passes, batch 64) measured in the
# same run, the settings taking turns within each of 3 repeats:
#   1. eager levers, one at a time (about 2 min): fp32 and bf16 precision, the ELBO passes on explicit
#      probabilities (what SDPA saves), channels_last, ELBO batch 100 and 200 (one chunk of 200 rows);
#   2. torch.compile (about 3-4 min, most of it compiling; each compiled setting's compilation is its warmup_s):
#      compile, and channels_last + compile.
# Each run has its own time limit (RUN1_S, RUN2_S; 200 + 260 s by default); a run cut short leaves its progress
# lines (built / warm-up / repeat) in its .log. PYTHON picks the interpreter (default: python); ARCH and DEVICE
# (default sd15-random, cuda) let the script be tried out elsewhere, e.g. ARCH=tiny-sd15 DEVICE=cpu.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
OUT="${OUT:-benchmarks/results/levers-$(date +%Y-%m-%d)}"
mkdir -p "$OUT"
BENCH=(benchmarks/bench_aligner.py --arch "${ARCH:-sd15-random}" --device "${DEVICE:-cuda}" --classes 10 --repeats 3)

{ date -u +%FT%TZ; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1
  "$PYTHON" -c "import torch, diffusers; print('torch', torch.__version__, 'diffusers', diffusers.__version__)"
} > "$OUT/levers-env.txt" 2>&1

run() {  # name, time limit (s), bench arguments
  local name=$1 limit=$2; shift 2
  echo "== $name: ${BENCH[*]} $* (limit ${limit} s)" | tee -a "$OUT/levers-$name.log"
  timeout "$limit" "$PYTHON" "${BENCH[@]}" --csv "$OUT/levers-$name.csv" "$@" > "$OUT/levers-$name.md" \
    2>> "$OUT/levers-$name.log"
  echo "exit $? after ${SECONDS} s in all" | tee -a "$OUT/levers-$name.log"
  cat "$OUT/levers-$name.md"
}

run eager "${RUN1_S:-200}" --compare fp32 bf16 explicit channels_last batch=100 batch=200
run compile "${RUN2_S:-260}" --compare compile channels_last+compile
