#!/usr/bin/env bash
# The GPU benchmarks in one unattended command (issue 19): on a machine with one CUDA GPU,
#
#   bash benchmarks/gpu.sh            # about 5-8 minutes on an H100/H200 class GPU
#
# runs the update suite (ASPC / TD3+BC per update, k_alpha 1-30, horizon 1, 5, 10), the
# hypergradient suite (backends, ASPC's coefficient step by horizon, CUDA events and peak
# memory) and the several-seeds suite (N = 1, 4, 8 vmapped seeds against N sequential runs)
# at width 256, batches 256 and 1024, and the captured update against eager (one seed and 8 vmapped
# seeds, benchmarks/bench_capture.py), writes benchmarks/results/{update,hypergrad,seeds}-gpu-full.json and
# results/capture-cuda.json, and regenerates benchmarks/results/TABLE.md. Everything it needs beyond the machine's own
# PyTorch (the project, and `higher` for that backend) is installed without a network: the
# project with --no-deps, `higher` from wheels in ./wheels if that folder exists (otherwise
# the higher rows are skipped). Settings: GPU_SH_DEVICE (cuda), GPU_SH_SIZE (full),
# GPU_SH_TIMEOUT (seconds per suite, 300), PYTHON (python3). GPU_SH_DEVICE=cpu GPU_SH_SIZE=tiny
# runs the same plumbing on a CPU in a few seconds (that is how it is tested here).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
DEVICE="${GPU_SH_DEVICE:-cuda}"
SIZE="${GPU_SH_SIZE:-full}"
LIMIT="${GPU_SH_TIMEOUT:-300}"

"$PY" -c "import metaconstraint" 2>/dev/null || "$PY" -m pip install -q --no-deps --no-build-isolation -e . \
    || export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ -d wheels ] && ! "$PY" -c "import higher" 2>/dev/null; then
    "$PY" -m pip install -q --no-index --find-links wheels higher || echo "gpu.sh: higher not installed; its rows are skipped"
fi
"$PY" - "$DEVICE" <<'PYEOF'
import sys, torch
want = sys.argv[1]
if want == "cuda" and not torch.cuda.is_available():
    sys.exit("gpu.sh: torch.cuda.is_available() is False: run it on a GPU machine (or GPU_SH_DEVICE=cpu to test it)")
name = torch.cuda.get_device_name(0) if want == "cuda" else "cpu"
print(f"gpu.sh: torch {torch.__version__}, device {name}")
PYEOF

cd benchmarks
status=0
for suite in test_bench_update.py test_bench_hypergrad.py test_bench_seeds.py; do
    start=$(date +%s)
    OMP_NUM_THREADS=1 timeout "$LIMIT" "$PY" -m pytest -q -p no:cacheprovider "$suite" --benchmark-only \
        --bench-size "$SIZE" --bench-device "$DEVICE" -o addopts="" || status=$?
    echo "gpu.sh: $suite took $(( $(date +%s) - start )) s (status $status)"
done
# the captured update (torch.compile, CUDA graphs on a GPU) against eager, one seed and 8 vmapped seeds
start=$(date +%s)
OMP_NUM_THREADS=1 timeout "$LIMIT" "$PY" bench_capture.py --device "$DEVICE" --seeds 8 \
    $([ "$SIZE" = tiny ] && echo "--width 16 --batch 32 --updates 20") --out "results/capture-$DEVICE.json" || status=$?
echo "gpu.sh: bench_capture.py took $(( $(date +%s) - start )) s (status $status)"
"$PY" make_table.py
exit "$status"
