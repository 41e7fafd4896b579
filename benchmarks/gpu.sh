#!/usr/bin/env bash
# One GPU, one script, under 10 minutes: train a watermarked ResNet-18 victim on Fashion-MNIST (preset gpu-bench),
# steal it through its embedding API in-process (ResNet-18 copy), and test the copy and the victim with the watermark
# and dataset-inference verifiers. Prints the wall time of each step and writes everything to OUT (default
# runs/gpu) and the step timings to benchmarks/out/scaleout/gpu_bench.csv.
#
#   bash benchmarks/gpu.sh                 # one GPU
#   NPROC=4 bash benchmarks/gpu.sh         # the victim and the copy on 4 GPUs of this host (torchrun, NCCL)
#
# Knobs (environment): OUT, NPROC (default 1), EPOCHS (victim, default the preset's 40), TRAIN_SIZE (default the
# preset's 25000), BUDGET (queries, default 10000), COPY_EPOCHS (default 30), REFS (reference models for the
# verifiers, default 8; they train on the CPU with the owner's recipe capped at REF_EPOCHS=3 epochs on
# REF_IMAGES=2000 images), DEVICE (default cuda), PRESET (default gpu-bench), COPY_ARCH (default resnet18);
# DEVICE=cpu PRESET=cpu COPY_ARCH=convnet with tiny sizes checks the script's steps without a GPU. A run
# stops with an error if any step fails; the 10-minute budget is checked at the end (exit code 3 when exceeded).
set -euo pipefail
cd "$(dirname "$0")/.."
EG=${EG:-.venv/bin/encoderguard}
OUT=${OUT:-runs/gpu}
NPROC=${NPROC:-1}
BUDGET=${BUDGET:-10000}
COPY_EPOCHS=${COPY_EPOCHS:-30}
REFS=${REFS:-8}
REF_EPOCHS=${REF_EPOCHS:-3}
REF_IMAGES=${REF_IMAGES:-2000}
DEVICE=${DEVICE:-cuda}
PRESET=${PRESET:-gpu-bench}
COPY_ARCH=${COPY_ARCH:-resnet18}
LIMIT_S=600
export ENCODERGUARD_NO_PROGRESS=1

[[ "$DEVICE" == cpu ]] || .venv/bin/python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" || {
  echo "gpu.sh: torch sees no CUDA GPU (install a CUDA build of torch: pip install torch --index-url" \
       "https://download.pytorch.org/whl/cu124)" >&2; exit 2; }
mkdir -p "$OUT" benchmarks/out/scaleout
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null | tee "$OUT/gpu.txt" >&2 || true

CSV=${CSV:-benchmarks/out/scaleout/gpu_bench.csv}
echo "step,seconds,nproc,result" > "$CSV"
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
secs_since() { local ms=$(( $(now_ms) - $1 )); printf '%d.%03d' $(( ms / 1000 )) $(( ms % 1000 )); }
start_all=$(now_ms)
step() {  # step NAME JSON_OUT CMD...: run CMD, keep its JSON, time it
  local name=$1 json=$2; shift 2
  local t0; t0=$(now_ms)
  { printf '+'; printf ' %q' "$@"; echo " > $json"; } >&2
  "$@" > "$json"
  local secs; secs=$(secs_since "$t0")
  echo "== $name: ${secs} s" >&2
  echo "$name,$secs,$NPROC,$json" >> "$CSV"
}

victim_args=(train --preset "$PRESET" --data fashion-mnist --watermark --seed 20261130 --device "$DEVICE"
             --nproc "$NPROC" --out "$OUT/victim" --json)
if [[ -n "${EPOCHS:-}" ]]; then victim_args+=(--epochs "$EPOCHS"); fi
if [[ -n "${TRAIN_SIZE:-}" ]]; then victim_args+=(--train-size "$TRAIN_SIZE"); fi
[[ -f "$OUT/victim/card.json" ]] || step train "$OUT/victim.json" "$EG" "${victim_args[@]}"

[[ -f "$OUT/copy/card.json" ]] || step steal "$OUT/copy.json" "$EG" steal --victim "$OUT/victim" \
  --budget "$BUDGET" --arch "$COPY_ARCH" --epochs "$COPY_EPOCHS" --batch-size 512 --device "$DEVICE" --nproc "$NPROC" \
  --eval-size 2000 --out "$OUT/copy" --json

step references "$OUT/references.json" "$EG" references build --owner "$OUT/victim" --out "$OUT/references" \
  --count "$REFS" --images "$REF_IMAGES" --max-epochs "$REF_EPOCHS" --json
step verify-copy "$OUT/verify_copy.json" "$EG" verify all --owner "$OUT/victim" --suspect "$OUT/copy" --json
step verify-victim "$OUT/verify_victim.json" "$EG" verify all --owner "$OUT/victim" --suspect "$OUT/victim" --json

total=$(secs_since "$start_all")
echo "total,$total,$NPROC," >> "$CSV"
echo "gpu.sh: total ${total} s (budget ${LIMIT_S} s); timings in $CSV" >&2
if (( $(now_ms) - start_all > LIMIT_S * 1000 )); then echo "gpu.sh: over the 10-minute budget" >&2; exit 3; fi
