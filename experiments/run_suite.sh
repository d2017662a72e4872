#!/usr/bin/env bash
# Issue 9: the small-scale reproduction suite (Pendulum-v1 random / medium / medium-replay / expert).
#
#   experiments/run_suite.sh            # datasets (if missing), all runs, then summarise
#   experiments/run_suite.sh datasets   # only build the Pendulum datasets that are missing
#   experiments/run_suite.sh runs       # only the training runs (finished runs are skipped)
#   experiments/run_suite.sh summarise  # copy small run files to experiments/results, report + plot
#
# Every run uses the same settings (below); ASPC uses its one default configuration on every
# dataset. Runs are ordered seed-major (all seed-0 runs first), so a suite cut short still has
# complete seeds. Single-threaded torch, JOBS processes at a time, under nice.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1
export MINARI_DATASETS_PATH="${MINARI_DATASETS_PATH:-$HOME/.minari/datasets}"
PY="${PYTHON:-python}"
RUNS_DIR="${RUNS_DIR:-experiments/runs}"       # full run directories (checkpoints; not committed)
RESULTS_DIR="${RESULTS_DIR:-experiments/results}"  # small files per run (committed)
JOBS="${JOBS:-2}"

# ---- the suite's settings (one budget and width for every run)
STEPS="${STEPS:-8000}"
WIDTH="${WIDTH:-64}"
BATCH=256
EVAL_EVERY=2000
EVAL_EPISODES=10
SEEDS="${SEEDS:-0 1 2}"
DATASETS="${DATASETS:-random medium medium-replay expert}"
# variant name -> "algo --set ..." (td3bc-robust: TD3+BC alpha=2.5 with ASPC's critic)
VARIANTS=(aspc td3bc-robust td3bc-plain)
variant_args() {
  case "$1" in
    aspc)         echo "--algo aspc" ;;
    td3bc-robust) echo "--algo td3bc --set critic=robust" ;;
    td3bc-plain)  echo "--algo td3bc --set critic=plain" ;;
  esac
}

stage="${1:-all}"

datasets() {
  local missing=0
  for d in $DATASETS; do
    [[ -f "$MINARI_DATASETS_PATH/metaconstraint/pendulum/$d-v0/data/main_data.hdf5" ]] || missing=1
  done
  if (( missing )); then
    nice -n 5 scripts/make_datasets.sh pendulum
  else
    echo "Pendulum datasets present in $MINARI_DATASETS_PATH"
  fi
}

one_run() {  # variant dataset seed
  local v="$1" d="$2" s="$3"
  local dir="$RUNS_DIR/$v/$v-$d-s$s"
  if [[ -f "$dir/summary.json" ]] && grep -q '"status": "finished"' "$dir/summary.json"; then
    echo "skip $dir (finished)"; return 0
  fi
  rm -rf "$dir"; mkdir -p "$(dirname "$dir")"
  local t0=$SECONDS
  # shellcheck disable=SC2046
  nice -n 5 "$PY" -m metaconstraint train $(variant_args "$v") \
    --dataset "metaconstraint/pendulum/$d-v0" --preset quick --steps "$STEPS" --batch-size "$BATCH" \
    --eval-every "$EVAL_EVERY" --eval-episodes "$EVAL_EPISODES" --seed "$s" --threads 1 \
    --checkpoint-every 0 --keep-checkpoints 1 --no-plots --quiet \
    --set actor_hidden="$WIDTH,$WIDTH" critic_width="$WIDTH" \
    --run-dir "$dir" > "$dir.log" 2>&1 || echo "FAILED $dir (see $dir.log)"
  echo "done $dir in $((SECONDS - t0)) s: $(tail -n 1 "$dir.log")"
}
export -f one_run variant_args
export RUNS_DIR STEPS WIDTH BATCH EVAL_EVERY EVAL_EPISODES PY

runs() {
  mkdir -p "$RUNS_DIR"
  local t0=$SECONDS
  # priority order (so a suite cut short is still informative): ASPC and TD3+BC with the same critic
  # on seeds 0 and 1, TD3+BC with the plain critic on seed 0, then the rest seed by seed
  local -a seeds=($SEEDS)
  pair() { for d in $DATASETS; do for v in aspc td3bc-robust; do echo "$v $d $1"; done; done; }
  plain() { for d in $DATASETS; do echo "td3bc-plain $d $1"; done; }
  { for s in "${seeds[@]:0:2}"; do pair "$s"; done; plain "${seeds[0]}"
    for s in "${seeds[@]:2}"; do pair "$s"; done
    for s in "${seeds[@]:1}"; do plain "$s"; done; } \
    | xargs -P "$JOBS" -L 1 bash -c 'one_run "$0" "$1" "$2"'
  echo "all runs done in $((SECONDS - t0)) s"
}

summarise() {
  # Copy config.yaml, summary.json and metrics.csv of every run (a few tens of kB each).
  for v in "${VARIANTS[@]}"; do
    for dir in "$RUNS_DIR/$v"/*/; do
      [[ -f "$dir/summary.json" ]] || continue
      local out="$RESULTS_DIR/$v/$(basename "$dir")"
      mkdir -p "$out"
      cp "$dir/config.yaml" "$dir/summary.json" "$dir/metrics.csv" "$out/"
    done
  done
  # `report` groups runs by algorithm name, so TD3+BC robust and plain are reported separately.
  "$PY" -m metaconstraint report "$RESULTS_DIR/aspc" "$RESULTS_DIR/td3bc-robust" \
    --title "ASPC vs TD3+BC (alpha = 2.5), both with the robust critic" --out "$RESULTS_DIR/report_robust_critic.md"
  "$PY" -m metaconstraint report "$RESULTS_DIR/td3bc-plain" \
    --title "TD3+BC (alpha = 2.5), plain critic" --out "$RESULTS_DIR/report_plain_critic.md"
  "$PY" experiments/combined_table.py "$RESULTS_DIR" > "$RESULTS_DIR/table.md"
  "$PY" -m metaconstraint plot "$RESULTS_DIR/aspc" --out "$RESULTS_DIR/plots_aspc"
  rm -f "$RESULTS_DIR/plots_aspc/losses.png" "$RESULTS_DIR/plots_aspc/overview.png"  # keep the commit small
}

case "$stage" in
  datasets) datasets ;;
  runs) runs ;;
  summarise) summarise ;;
  all) datasets; runs; summarise ;;
  *) echo "usage: $0 [all|datasets|runs|summarise]" >&2; exit 2 ;;
esac
