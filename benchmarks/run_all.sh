#!/usr/bin/env bash
# Reruns the benchmarks behind every number in benchmarks/RESULTS.md (hours on 2 CPU cores; each script also runs
# alone, see RESULTS.md for the exact command of each table). Outputs land in benchmarks/out/ (git-ignored).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
bash benchmarks/train_default.sh runs/victim-bench
$PY benchmarks/api_throughput.py --encoder runs/victim-bench
$PY benchmarks/api_load.py
$PY benchmarks/api_durability.py --cycles 3
for script in benchmarks/steal_http.py benchmarks/steal_vs_seed.py benchmarks/watermark_victim.py \
              benchmarks/watermark_transfer.py benchmarks/watermark_null.py benchmarks/di_matrix.py \
              benchmarks/defence_tradeoff.py benchmarks/defence_throughput.py; do
  [ -f "$script" ] && echo "== $script (see RESULTS.md for its arguments)" && $PY "$script" --help >/dev/null
done
echo "The scripts above take the arguments listed beside each table in benchmarks/RESULTS.md."
