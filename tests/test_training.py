"""The trainer: exact resume, atomic and safe checkpoints, the divergence guard, run-directory files."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from metaconstraint.config import resolve
from metaconstraint.rundir import (
    CHECKPOINT_FORMAT,
    CheckpointError,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from metaconstraint.training import Trainer, TrainingDiverged
from tests.pendulum_data import make_dataset

# Tiny settings every test run uses: 16-wide nets, alpha moving every 2 actor steps.
TINY_SETS = [
    "agent.actor_hidden=16,16",
    "agent.critic_width=16",
    "agent.constraint.every=2",
    "batch_size=64",
    "log_every=50",
    "checkpoint_every=100",
    "eval_episodes=2",
]


def write_tiny_npz(path: Path, episodes: int = 6, seed: int = 0, reward_scale: float = 1.0) -> Path:
    """A Pendulum-v1 dataset (noisy energy controller) as a D4RL-style .npz with env id and reference scores."""
    data = make_dataset("expert", episodes=episodes, seed=seed, noise=0.5)
    n = len(data["rewards"])
    np.savez(
        path,
        observations=data["observations"],
        actions=data["actions"],
        rewards=data["rewards"] * reward_scale,
        next_observations=data["next_observations"],
        terminals=data["terminals"],
        timeouts=(np.arange(n) % 200) == 199,
        env_id=np.array("Pendulum-v1"),
        ref_min_score=np.array(-1200.0),
        ref_max_score=np.array(-150.0),
    )
    return path


@pytest.fixture(scope="module")
def tiny_npz(tmp_path_factory) -> Path:
    return write_tiny_npz(tmp_path_factory.mktemp("data") / "pendulum_tiny.npz")


def tiny_config(dataset: Path, steps: int = 600, **flags):
    flags = {"algo": "aspc", "dataset": str(dataset), "steps": steps, "eval_every": 300, "seed": 0, **flags}
    return resolve(flags=flags, sets=TINY_SETS)


def run(config, run_dir: Path, stop_after: int | None = None, hook=None):
    trainer = Trainer(config, run_dir, progress=False, echo=None, plots=False)
    if hook is not None:
        trainer.setup()
        hook(trainer)
    return trainer, trainer.train(stop_after=stop_after)


def flat_tensors(state, prefix=""):
    """Every tensor in a nested state dict, by path."""
    out = {}
    if isinstance(state, dict):
        for k, v in state.items():
            out.update(flat_tensors(v, f"{prefix}{k}."))
    elif isinstance(state, (list, tuple)):
        for i, v in enumerate(state):
            out.update(flat_tensors(v, f"{prefix}{i}."))
    elif isinstance(state, torch.Tensor):
        out[prefix[:-1]] = state
    else:
        out[prefix[:-1]] = state
    return out


def metric_rows(run_dir: Path, drop=("wall_s", "steps_per_s")) -> list[dict]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return [{k: v for k, v in r.items() if k not in drop} for r in csv.DictReader(f)]


@pytest.fixture(scope="module")
def straight(tiny_npz, tmp_path_factory):
    """An uninterrupted 600-step run, shared by the tests that compare against it."""
    run_dir = tmp_path_factory.mktemp("runs") / "straight"
    trainer, result = run(tiny_config(tiny_npz), run_dir)
    return trainer, result, run_dir


# -- the run directory ------------------------------------------------------------------------------


def test_run_directory_holds_config_metrics_checkpoints_and_summary(straight):
    trainer, result, run_dir = straight
    assert result.status == "finished" and result.step == 600
    cfg = (run_dir / "config.yaml").read_text()
    assert "planned_steps: 600" in cfg and "actor_hidden: [16, 16]" in cfg
    rows = metric_rows(run_dir, drop=())
    assert [int(r["step"]) for r in rows] == [0, *range(50, 601, 50)]  # step 0: the untrained policy's evaluation
    header = rows[0].keys()
    for name in trainer.agent.metric_names:
        assert name in header
    evals = [r for r in rows if r["eval_score"] != ""]
    assert [int(r["step"]) for r in evals] == [0, 300, 600]
    # the normalised score is the return mapped through the dataset's reference scores
    for r in evals:
        assert float(r["eval_score"]) == pytest.approx(100 * (float(r["eval_return"]) + 1200) / 1050, rel=1e-9)
    jsonl = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [j["step"] for j in jsonl] == [int(r["step"]) for r in rows]
    assert jsonl[-1]["alpha"] == pytest.approx(float(rows[-1]["alpha"]), rel=1e-12)
    # keep_checkpoints=3 of the checkpoints every 100 steps
    assert [s for s, _ in list_checkpoints(run_dir)] == [400, 500, 600]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["step"] == 600
    assert summary["dataset_sha256"] == trainer.data.fingerprint()  # which build of the data the run saw
    assert summary["final_score"] == pytest.approx(float(evals[-1]["eval_score"]))
    assert summary["coef_start"] == pytest.approx(2.5)
    assert summary["coef_end"] == pytest.approx(float(trainer.agent.constraint.value()))
    assert summary["coef_end"] != pytest.approx(2.5, abs=1e-6)  # alpha did move
    assert summary["coef_min"] <= summary["coef_end"] <= summary["coef_max"]


# -- exact resume -------------------------------------------------------------------------------------


def _interrupt_at(step: int):
    def hook(trainer):
        update = trainer.agent.update

        def wrapped(batch):
            out = update(batch)
            if trainer.agent.num_updates == step:
                os.kill(os.getpid(), signal.SIGINT)  # arrives while this update finishes
            return out

        trainer.agent.update = wrapped

    return hook


@pytest.mark.parametrize("how", ["stop_after", "sigint"])
def test_stop_at_300_and_resume_to_600_equals_a_straight_run(straight, tiny_npz, tmp_path, how):
    s_trainer, _, s_dir = straight
    run_dir = tmp_path / "resumed"
    handler_before = signal.getsignal(signal.SIGINT)  # SIG_IGN when started in the background
    if how == "stop_after":
        _, first = run(tiny_config(tiny_npz), run_dir, stop_after=300)
        assert first.status == "stopped"
    else:
        _, first = run(tiny_config(tiny_npz), run_dir, hook=_interrupt_at(300))
        assert first.status == "interrupted" and first.signal == signal.SIGINT
    assert first.step == 300 and latest_checkpoint(run_dir).name == "step_00000300.pt"
    assert signal.getsignal(signal.SIGINT) is handler_before  # handlers restored

    resumed = Trainer.resume(run_dir, progress=False, echo=None, plots=False)
    result = resumed.train()
    assert result.status == "finished" and result.step == 600

    want, got = flat_tensors(s_trainer.agent.state_dict()), flat_tensors(resumed.agent.state_dict())
    assert want.keys() == got.keys()
    for k in want:
        if isinstance(want[k], torch.Tensor):
            assert torch.equal(want[k], got[k]), k
        else:
            assert want[k] == got[k], k
    assert torch.equal(s_trainer.sampler.generator.get_state(), resumed.sampler.generator.get_state())
    assert metric_rows(s_dir) == metric_rows(run_dir)  # the same rows, to the last digit


def test_resume_of_a_finished_run_does_nothing(straight):
    _, result, run_dir = straight
    before = (run_dir / "metrics.csv").read_text()
    again = Trainer.resume(run_dir, progress=False, echo=None, plots=False).train()
    assert again.status == "finished" and again.step == 600
    assert (run_dir / "metrics.csv").read_text() == before


# -- checkpoints ---------------------------------------------------------------------------------------


def test_crash_during_checkpoint_write_leaves_the_previous_checkpoint_loadable(straight, tmp_path):
    _, _, run_dir = straight
    src = latest_checkpoint(run_dir)
    target = tmp_path / "checkpoints" / "step_00000600.pt"
    target.parent.mkdir()
    target.write_bytes(src.read_bytes())
    good = load_checkpoint(target)
    # A process that dies (os._exit, no cleanup) halfway through writing a new checkpoint over it.
    script = textwrap.dedent(
        f"""
        import io, os, torch
        from metaconstraint.rundir import save_checkpoint
        real_save = torch.save
        def dying_save(obj, f, *a, **k):
            buf = io.BytesIO(); real_save(obj, buf)
            data = buf.getvalue(); f.write(data[: len(data) // 2]); f.flush()
            os._exit(17)
        torch.save = dying_save
        save_checkpoint({{"format": "x", "big": torch.zeros(100000)}}, {str(target)!r})
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == 17, proc.stderr
    leftovers = [p.name for p in target.parent.iterdir() if p.name != target.name]
    assert leftovers and all(n.endswith(".tmp") for n in leftovers)  # the half-written file is a temp file
    assert [p.name for _, p in list_checkpoints(tmp_path)] == [target.name]  # ... which is never listed
    after = load_checkpoint(target)
    assert after["step"] == good["step"] == 600
    assert torch.equal(after["agent"]["actor"]["net.0.weight"], good["agent"]["actor"]["net.0.weight"])


def test_failed_write_raises_and_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "step_00000001.pt"
    save_checkpoint({"format": CHECKPOINT_FORMAT, "v": torch.ones(3)}, path)

    def broken(obj, f, *a, **k):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint({"format": CHECKPOINT_FORMAT, "v": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(path)["v"], torch.ones(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # the temp file was removed


class _Payload:
    """Pickles to a call of ``exec``: what a malicious checkpoint would carry."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('code ran')",))


def test_tampered_pickle_checkpoint_is_refused_without_running_it(straight, tmp_path):
    _, _, run_dir = straight
    marker = tmp_path / "pwned"
    state = load_checkpoint(latest_checkpoint(run_dir))
    state["trainer"]["evil"] = _Payload(marker)
    bad = tmp_path / "step_00000600.pt"
    torch.save(state, bad)
    with pytest.raises(CheckpointError, match="refusing to load .* could run code"):
        load_checkpoint(bad)
    assert not marker.exists()
    # the file really is malicious: a plain unsafe load runs the payload
    torch.load(bad, weights_only=False)
    assert marker.read_text() == "code ran"


def test_a_damaged_or_foreign_file_is_a_clear_error(tmp_path):
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="damaged or not a checkpoint"):
        load_checkpoint(broken)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.ones(2)}, foreign)
    with pytest.raises(CheckpointError, match="not a metaconstraint training checkpoint"):
        load_checkpoint(foreign)


# -- divergence guard ---------------------------------------------------------------------------------


def test_divergence_guard_names_quantity_and_step_and_keeps_last_good_checkpoint(tiny_npz, tmp_path):
    def hook(trainer):
        update = trainer.agent.update

        def wrapped(batch):
            out = update(batch)
            if trainer.agent.num_updates == 250:
                out = dict(out, q_mean=torch.tensor(float("inf")))
            return out

        trainer.agent.update = wrapped

    run_dir = tmp_path / "div"
    with pytest.raises(TrainingDiverged, match=r"q_mean is inf at step 250.*step_00000200\.pt") as info:
        run(tiny_config(tiny_npz, steps=400), run_dir, hook=hook)
    assert (info.value.quantity, info.value.step) == ("q_mean", 250)
    assert [s for s, _ in list_checkpoints(run_dir)] == [100, 200]  # nothing written after the divergence
    assert load_checkpoint(latest_checkpoint(run_dir))["step"] == 200
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["error"]["step"] == 250
    assert max(int(r["step"]) for r in metric_rows(run_dir)) == 200  # no row with the bad values


def test_guard_catches_the_agents_own_nonfinite_loss(tmp_path):
    """Rewards of 1e30 overflow the critic's squared error on the first step."""
    data = write_tiny_npz(tmp_path / "huge.npz", episodes=2, reward_scale=1e30)
    with pytest.raises(TrainingDiverged, match=r"critic loss is inf at step 1") as info:
        run(tiny_config(data, steps=100), tmp_path / "huge")
    assert info.value.step == 1 and latest_checkpoint(tmp_path / "huge") is None


def test_a_run_pinned_to_another_build_of_its_data_stops_before_step_1_and_leaves_nothing(tmp_path, tiny_npz):
    from metaconstraint.data import load
    from metaconstraint.rundir import RunError

    sha = load(str(tiny_npz)).fingerprint()
    other = ("0" if sha[0] != "0" else "1") + sha[1:16]
    with pytest.raises(RunError, match=rf"has content sha256 {sha[:16]}…, but the run asks for {other}…"):
        run(tiny_config(tiny_npz, steps=100, dataset_sha256=other), tmp_path / "wrong")
    assert not (tmp_path / "wrong").exists()  # a run that never started leaves no directory
    _, result = run(tiny_config(tiny_npz, steps=100, dataset_sha256=sha[:8].upper()), tmp_path / "right")
    assert result.summary["status"] == "finished" and result.summary["dataset_sha256"] == sha


@pytest.mark.parametrize("value", ["abc", "xyz12345", "a" * 65])
def test_dataset_sha256_must_be_hex_digits(tiny_npz, value):
    from metaconstraint.config import ConfigError

    with pytest.raises(ConfigError, match="dataset_sha256 must be the data's content sha256 or a prefix of it"):
        tiny_config(tiny_npz, dataset_sha256=value)
