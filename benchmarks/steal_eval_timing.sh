#!/usr/bin/env bash
# Owner-side evaluation time of `encoderguard steal`, before (commit 1aaccd4: probes on a multi-threaded BLAS) and
# after (one BLAS thread; --eval-size), in turn A B A B ..., on the same victim. Rows: benchmarks/out/steal_eval/.
#
#   bash benchmarks/steal_eval_timing.sh VICTIM_DIR [RUNS]
#
# Each run: `steal --victim VICTIM_DIR --budget 200 --epochs 2` (the evaluation dominates), timed by the command's own
# eval_seconds and by /usr/bin/time. Timings only mean something on an otherwise idle machine.
set -euo pipefail
cd "$(dirname "$0")/.."
victim=${1:?usage: steal_eval_timing.sh VICTIM_DIR [RUNS]}
runs=${2:-3}
before=1aaccd4
out=benchmarks/out/steal_eval
mkdir -p "$out"
base=$(mktemp -d)
trap 'git worktree remove --force "$base/src-tree" >/dev/null 2>&1 || true; rm -rf "$base"' EXIT
git worktree add --detach "$base/src-tree" "$before" >/dev/null
: > "$out/rows.jsonl"
one() {  # one CODE RUN EVAL_SIZE_ARGS...
  local code=$1 run=$2; shift 2
  local dir="$base/copy-$code-$run"
  local pp=""; [[ $code == before ]] && pp="$base/src-tree/src"
  PYTHONPATH=$pp /usr/bin/time -f '%e' -o "$base/time" .venv/bin/python -m encoderguard.cli.main steal \
    --victim "$victim" --budget 200 --epochs 2 --out "$dir" --json --no-progress "$@" > "$base/out.json" 2>/dev/null
  .venv/bin/python - "$code" "$run" "$(cat "$base/time")" "$*" "$base/out.json" >> "$out/rows.jsonl" <<'PY'
import json, sys
code, run, wall, extra, path = sys.argv[1:]
d = json.load(open(path))
print(json.dumps({"code": code, "run": int(run), "args": extra or "(full probe sets)", "wall_seconds": float(wall),
                  "eval_seconds": round(d["eval_seconds"], 2), "n_test": d["n_test"], "linear_acc": d["linear_acc"],
                  "victim_linear_acc": d["victim_linear_acc"], "random_init_linear_acc": d["random_init_linear_acc"],
                  "fidelity_cosine": d["fidelity_cosine"]}))
PY
}
for r in $(seq 0 $((runs - 1))); do
  one after "$r"
  one before "$r"
done
one after 0 --eval-size 1000
cat "$out/rows.jsonl"
