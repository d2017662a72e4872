#!/usr/bin/env bash
# Issue 9: the small-scale reproduction suite (Pendulum-v1 and Hopper-v5 datasets made here).
#
#   experiments/run_suite.sh            # datasets (if missing), all runs, then summarise
#   experiments/run_suite.sh datasets   # only build the datasets that are missing
#   experiments/run_suite.sh runs       # the main training runs (finished runs are skipped)
#   experiments/run_suite.sh extras     # d3rlpy's TD3PlusBC on 3 datasets, the 2 ablations on seeds 0-1
#   experiments/run_suite.sh summarise  # copy small run files to experiments/results, report + plot
#
# Every run uses the same budget and network sizes (below); ASPC uses one configuration on every
# dataset. VARIANTS, DATASETS and SEEDS (environment) pick a subset, e.g.
#   VARIANTS="iql rebrac" DATASETS="hopper/medium" experiments/run_suite.sh runs
# Runs are ordered seed-major (all seed-0 runs first), so a suite cut short still has complete
# seeds. Single-threaded torch, JOBS processes at a time, under nice.
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
ALL_DATASETS="pendulum/random pendulum/medium-replay pendulum/medium pendulum/expert pendulum/medium-expert
              hopper/random hopper/medium-replay hopper/medium"
DATASETS="${DATASETS:-$ALL_DATASETS}"
MAIN_VARIANTS="aspc td3bc-robust td3bc-plain aspc-alpha-lr-0.25 iql rebrac"   # every dataset, 3 seeds
EXTRA_VARIANTS="d3rlpy-td3plusbc aspc-alpha-lr-0.25-L1 aspc-alpha-lr-0.25-dq-step"  # subsets: see extras()
ALL_VARIANTS="$MAIN_VARIANTS $EXTRA_VARIANTS"
VARIANTS="${VARIANTS:-$MAIN_VARIANTS}"
# variant name -> "--algo ... --set ..."
#   td3bc-robust: TD3+BC alpha=2.5 with ASPC's critic; td3bc-plain: the original 2-layer critic
#   aspc-alpha-lr-0.25: ASPC with the alpha learning rate scaled by 1M / 8k steps = 125, so that alpha
#     can travel as far in 8k steps as the spec's 2e-3 lets it in the paper's 1M (one setting, every dataset)
#   aspc-alpha-lr-0.25-L1 / -dq-step: ablations of the above (outer loss L1 only; the paper text's
#     delta_q = mean Q1(s, pi~) - mean Q1(s, pi) instead of the reference implementation's EMA)
#   iql: published Gym-MuJoCo settings (expectile 0.7, beta 3, rewards scaled to 1000 / return range)
#   rebrac: its default settings
#   d3rlpy-td3plusbc: the external peer, d3rlpy's TD3PlusBC (experiments/d3rlpy_peer.py; optional extra
#     `bench`, slow here because of d3rlpy's per-item batch sampling, so run it on a few datasets:
#     VARIANTS=d3rlpy-td3plusbc DATASETS="pendulum/medium pendulum/expert hopper/medium")
variant_args() {
  case "$1" in
    aspc)               echo "--algo aspc" ;;
    aspc-alpha-lr-0.25) echo "--algo aspc --set alpha_lr=0.25 tag=alpha_lr=0.25" ;;
    aspc-alpha-lr-0.25-L1)      echo "--algo aspc --set alpha_lr=0.25 terms=L1 tag=alpha_lr=0.25,L1" ;;
    aspc-alpha-lr-0.25-dq-step) echo "--algo aspc --set alpha_lr=0.25 delta_q=step tag=alpha_lr=0.25,delta_q=step" ;;
    td3bc-robust)       echo "--algo td3bc --set critic=robust" ;;
    td3bc-plain)        echo "--algo td3bc --set critic=plain" ;;
    iql)                echo "--algo iql --set reward_scale=locomotion" ;;
    rebrac)             echo "--algo rebrac" ;;
    d3rlpy-td3plusbc)   echo "" ;;  # not `metaconstraint train`: see one_run
    *) echo "unknown variant $1" >&2; return 2 ;;
  esac
}

stage="${1:-all}"

datasets() {
  local need=""
  for d in $DATASETS; do
    [[ -f "$MINARI_DATASETS_PATH/metaconstraint/${d%%/*}/${d#*/}-v0/data/main_data.hdf5" ]] || need="$need ${d%%/*}"
  done
  for domain in $(echo "$need" | tr ' ' '\n' | sort -u); do
    nice -n 5 scripts/make_datasets.sh "$domain"
  done
  [[ -n "$need" ]] || echo "datasets present in $MINARI_DATASETS_PATH"
}

one_run() {  # variant domain/dataset seed
  local v="$1" d="$2" s="$3"
  local dir="$RUNS_DIR/$v/$v-${d/\//-}-s$s"
  if [[ -f "$dir/summary.json" ]] && grep -q '"status": "finished"' "$dir/summary.json"; then
    echo "skip $dir (finished)"; return 0
  fi
  rm -rf "$dir"; mkdir -p "$(dirname "$dir")"
  local t0=$SECONDS
  if [[ "$v" == d3rlpy-td3plusbc ]]; then
    nice -n 5 "$PY" experiments/d3rlpy_peer.py --dataset "metaconstraint/$d-v0" --steps "$STEPS" \
      --batch-size "$BATCH" --width "$WIDTH" --eval-every "$EVAL_EVERY" --eval-episodes "$EVAL_EPISODES" \
      --seed "$s" --run-dir "$dir" > "$dir.log" 2>&1 || echo "FAILED $dir (see $dir.log)"
    echo "done $dir in $((SECONDS - t0)) s: $(tail -n 1 "$dir.log")"; return 0
  fi
  # shellcheck disable=SC2046
  nice -n 5 "$PY" -m metaconstraint train $(variant_args "$v") \
    --dataset "metaconstraint/$d-v0" --preset quick --steps "$STEPS" --batch-size "$BATCH" \
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
  for s in $SEEDS; do for v in $VARIANTS; do for d in $DATASETS; do echo "$v $d $s"; done; done; done \
    | xargs -P "$JOBS" -L 1 bash -c 'one_run "$0" "$1" "$2"'
  echo "all runs done in $((SECONDS - t0)) s"
}

extras() {  # what the committed results hold for the slower peer and the ablations
  SEEDS="0 1 2" VARIANTS=d3rlpy-td3plusbc DATASETS="pendulum/medium pendulum/expert hopper/medium" runs
  SEEDS="0 1" VARIANTS="aspc-alpha-lr-0.25-L1 aspc-alpha-lr-0.25-dq-step" DATASETS="$ALL_DATASETS" runs
}

summarise() {
  # Copy config.yaml, summary.json and metrics.csv of every run (a few tens of kB each).
  for v in $ALL_VARIANTS; do
    for dir in "$RUNS_DIR/$v"/*/; do
      [[ -f "$dir/summary.json" ]] || continue
      local out="$RESULTS_DIR/$v/$(basename "$dir")"
      mkdir -p "$out"
      cp "$dir/config.yaml" "$dir/summary.json" "$dir/metrics.csv" "$out/"
    done
  done
  "$PY" -m metaconstraint report "$RESULTS_DIR" --per-seed \
    --title "Issue 9: small-scale suite (8k steps, width 64, 3 seeds)" --out "$RESULTS_DIR/report.md"
  "$PY" -m metaconstraint plot "$RESULTS_DIR/aspc" --out "$RESULTS_DIR/plots_aspc"
  "$PY" -m metaconstraint plot "$RESULTS_DIR/aspc-alpha-lr-0.25" --out "$RESULTS_DIR/plots_aspc_alpha_lr"
  for v in L1 dq-step; do
    [[ -d "$RESULTS_DIR/aspc-alpha-lr-0.25-$v" ]] || continue
    "$PY" -m metaconstraint plot "$RESULTS_DIR/aspc-alpha-lr-0.25-$v" --out "$RESULTS_DIR/plots_aspc_alpha_lr_$v"
  done
  # keep the commit small: only the alpha and score figures
  find "$RESULTS_DIR"/plots_* -name '*.png' ! -name 'alpha.png' ! -name 'score.png' -delete
}

case "$stage" in
  datasets) datasets ;;
  runs) runs ;;
  extras) extras ;;
  summarise) summarise ;;
  all) datasets; runs; extras; summarise ;;
  *) echo "usage: $0 [all|datasets|runs|extras|summarise]" >&2; exit 2 ;;
esac
