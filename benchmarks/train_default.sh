#!/usr/bin/env bash
# The "foundation" claim: the default CPU victim preset trains in <= 5 minutes on 2 cores and beats the
# random-init baseline of the same architecture by >= 3 linear-probe points.
# Usage: bash benchmarks/train_default.sh [OUT_DIR]   (default runs/bench/victim-default)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/bench/victim-default}
rm -rf "$out"
mkdir -p benchmarks/out
export ENCODERGUARD_NO_PROGRESS=1
/usr/bin/time -f '%e s wall, %U s user, %M KB max RSS' -o benchmarks/out/train_default.time \
  .venv/bin/encoderguard train --data fashion-mnist --epochs 15 --train-size 10000 --seed 0 --out "$out" --json \
  > benchmarks/out/train_default.json
.venv/bin/encoderguard probe --encoder "$out" --json > benchmarks/out/probe_default.json
cat benchmarks/out/train_default.time benchmarks/out/train_default.json benchmarks/out/probe_default.json
