"""Crash recovery: SIGKILL a training process at random points, resume each time, end where an
uninterrupted run ends (every metrics row, the final agent), with no temporary files left over."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from pathlib import Path

import torch

from metaconstraint.config import resolve
from metaconstraint.rundir import latest_checkpoint, list_checkpoints, load_checkpoint
from tests.test_training import flat_tensors, metric_rows, run, write_tiny_npz

REPO = Path(__file__).resolve().parents[1]
STEPS = 400
SETS = ["agent.actor_hidden=16,16", "agent.critic_width=16", "agent.constraint.every=2", "batch_size=64",
        "log_every=10", "checkpoint_every=20", "keep_checkpoints=3", "eval_episodes=2"]


def _last_logged_step(run_dir: Path) -> int:
    try:
        lines = (run_dir / "metrics.csv").read_text().split("\n")[1:-1]  # complete rows only
    except OSError:
        return 0
    return int(lines[-1].split(",")[0]) if lines else 0


def test_sigkill_at_random_points_and_resume_ends_like_an_uninterrupted_run(tmp_path):
    data = write_tiny_npz(tmp_path / "data.npz", episodes=2)
    flags = {"algo": "aspc", "dataset": str(data), "steps": STEPS, "eval_every": 200, "seed": 0}
    straight_dir = tmp_path / "straight"
    straight, _ = run(resolve(flags=flags, sets=SETS), straight_dir)

    run_dir = tmp_path / "killed"
    fresh = ["train", "--algo", "aspc", "--dataset", data, "--steps", STEPS, "--eval-every", 200, "--seed", 0,
             "--run-dir", run_dir, "--set", *SETS]
    common = ["--quiet", "--no-plots", "--threads", "1"]
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    rng = random.Random(15)
    targets = sorted(rng.sample(range(30, STEPS - 20), 4))  # kill once the run has logged this step ...
    kills = []
    for target in targets:
        argv = fresh if not (run_dir / "config.yaml").exists() else ["train", "--resume", run_dir]
        proc = subprocess.Popen([sys.executable, "-m", "metaconstraint", *map(str, argv), *common], cwd=tmp_path, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        while proc.poll() is None and (_last_logged_step(run_dir) < target or not list_checkpoints(run_dir)):
            time.sleep(0.002)
        time.sleep(rng.uniform(0.0, 0.03))  # ... and a random moment later (mid-update, mid-write, mid-evaluation)
        if proc.poll() is None:
            proc.kill()
            kills.append(_last_logged_step(run_dir))
        _, err = proc.communicate()
        assert proc.returncode in (-9, 0), err
    assert len(kills) >= 3, f"the process finished before it could be killed: {kills}"
    print(f"killed after logged steps {kills}")
    final = subprocess.run([sys.executable, "-m", "metaconstraint", "train", "--resume", str(run_dir), *common],
                           cwd=tmp_path, env=env, capture_output=True, text=True)
    assert final.returncode == 0, final.stderr

    assert metric_rows(run_dir) == metric_rows(straight_dir)  # every row once, to the last digit
    got = flat_tensors(load_checkpoint(latest_checkpoint(run_dir))["agent"])
    want = flat_tensors(straight.agent.state_dict())
    assert got.keys() == want.keys()
    for k in want:
        assert torch.equal(got[k], want[k]) if isinstance(want[k], torch.Tensor) else got[k] == want[k], k
    leftovers = [p.name for p in run_dir.rglob("*") if p.name.endswith((".tmp", ".damaged"))]
    assert leftovers == []
