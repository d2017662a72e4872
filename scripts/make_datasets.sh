#!/usr/bin/env bash
# Build the offline datasets with `metaconstraint collect` (module metaconstraint.data.collect).
#
#   scripts/make_datasets.sh builtin    # Pendulum-v1 medium, shipped in metaconstraint/datasets/
#   scripts/make_datasets.sh pendulum   # Pendulum-v1 random, medium, medium-replay, expert, medium-expert
#   scripts/make_datasets.sh hopper     # Hopper-v5 medium, medium-replay, random (TD3 on a step budget)
#   scripts/make_datasets.sh all        # the three above
#
# Datasets go to $MINARI_DATASETS_PATH (default ~/.minari/datasets); trained TD3 behaviour runs are
# cached in $BEHAVIOUR_DIR (default $MINARI_DATASETS_PATH/.behaviours) and reused by later calls.
# Extra arguments after the target are passed to every collect call (e.g. --overwrite).
# Single-threaded on purpose (2-core shared machine); run it under `nice`.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
export MINARI_DATASETS_PATH="${MINARI_DATASETS_PATH:-$HOME/.minari/datasets}"
BEHAVIOUR_DIR="${BEHAVIOUR_DIR:-$MINARI_DATASETS_PATH/.behaviours}"
PY="${PYTHON:-python}"
target="${1:-all}"
shift || true

collect() { "$PY" -m metaconstraint.data.collect "$@"; }

# TD3 behaviour trainer settings (also the cache key of the trained run: keep them identical
# between the builtin and pendulum targets so both reuse one run)
PENDULUM_TD3=(--td3-steps 20000 --td3-start-steps 1000 --td3-hidden 64,64 --td3-eval-every 500
              --td3-eval-episodes 10 --td3-confirm-episodes 50 --ref-episodes 50 --seed 0)
PENDULUM_STEPS=100000
BUILTIN_STEPS=50000
# Hopper: a full TD3 expert (~1M updates) is not affordable on a shared 2-core CPU, so the trainer
# stops at return 2000 (or 150k steps), "medium" is chosen at 1/3-1/2 of D4RL's expert return, and
# the datasets store D4RL's Hopper reference scores (comparable with published normalised scores).
HOPPER_TD3=(--td3-steps "${HOPPER_TD3_STEPS:-150000}" --td3-start-steps 10000 --td3-hidden 128,128
            --td3-eval-every 5000 --td3-eval-episodes 5 --td3-confirm-episodes 20 --td3-stop-return 2000
            --td3-reference=-20.272305,3234.3 --ref-min-score=-20.272305 --ref-max-score 3234.3
            --ref-episodes 50 --seed 0)
HOPPER_STEPS="${HOPPER_STEPS:-1000000}"
HOPPER_RANDOM_STEPS="${HOPPER_RANDOM_STEPS:-200000}"

run() {  # name, then collect arguments; logs the wall time of each call
  local name="$1"; shift
  local t0=$SECONDS
  echo "== $name: collect $*"
  collect "$@"
  echo "== $name: done in $((SECONDS - t0)) s"
}

case "$target" in
  builtin|all)
    run builtin Pendulum-v1 --behaviour medium --steps "$BUILTIN_STEPS" --compact "${PENDULUM_TD3[@]}" \
      --datasets-path metaconstraint/datasets --dataset-id metaconstraint/pendulum/medium-v0 \
      --behaviour-dir "$BEHAVIOUR_DIR" "$@"
    ;;&
  pendulum|all)
    for b in random medium medium-replay expert medium-expert; do
      # random trains nothing by itself; --measure-ref-scores takes ref_max_score from the (cached) TD3 expert
      measure=(); [ "$b" = random ] && measure=(--measure-ref-scores)
      run "pendulum-$b" Pendulum-v1 --behaviour "$b" --steps "$PENDULUM_STEPS" "${PENDULUM_TD3[@]}" "${measure[@]}" \
        --behaviour-dir "$BEHAVIOUR_DIR" "$@"
    done
    ;;&
  hopper|all)
    for b in medium medium-replay; do
      run "hopper-$b" Hopper-v5 --behaviour "$b" --steps "$HOPPER_STEPS" "${HOPPER_TD3[@]}" \
        --behaviour-dir "$BEHAVIOUR_DIR" "$@"
    done
    # random episodes are ~20 steps long: fewer steps, compacted (Minari's per-episode overhead dominates)
    run hopper-random Hopper-v5 --behaviour random --steps "$HOPPER_RANDOM_STEPS" --compact "${HOPPER_TD3[@]}" \
      --behaviour-dir "$BEHAVIOUR_DIR" "$@"
    ;;
  builtin|pendulum) ;;
  *) echo "usage: $0 [builtin|pendulum|hopper|all] [collect options...]" >&2; exit 2 ;;
esac
