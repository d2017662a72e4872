"""Reliability of the run directory: one writer, checksummed checkpoints, failures before training,
range-checked settings, and messages instead of tracebacks (issue 15, cases 2-6)."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from metaconstraint import cli
from metaconstraint.config import ConfigError, resolve
from metaconstraint.rundir import (
    CheckpointError,
    CheckpointNotice,
    RunError,
    checkpoint_digest,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
)
from metaconstraint.training import Trainer
from tests.test_cli import main, tiny_train_args
from tests.test_training import flat_tensors, metric_rows, run, tiny_config, write_tiny_npz

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_npz(tmp_path_factory) -> Path:
    return write_tiny_npz(tmp_path_factory.mktemp("data") / "pendulum_tiny.npz")


@pytest.fixture(scope="module")
def straight(tiny_npz, tmp_path_factory):
    """An uninterrupted 600-step run (evaluations at 300 and 600, checkpoints every 100)."""
    run_dir = tmp_path_factory.mktemp("runs") / "straight"
    trainer, result = run(tiny_config(tiny_npz), run_dir)
    return trainer, result, run_dir


def quiet(**kw):
    return dict(progress=False, echo=None, plots=False, **kw)


def same_agent(a, b) -> None:
    want, got = flat_tensors(a.agent.state_dict()), flat_tensors(b.agent.state_dict())
    assert want.keys() == got.keys()
    for k in want:
        assert torch.equal(want[k], got[k]) if isinstance(want[k], torch.Tensor) else want[k] == got[k], k


def _python(code: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)


# -- case 2: one writer per run directory ------------------------------------------------------------


def test_a_locked_run_directory_refuses_a_second_train_and_resume_naming_the_pid(straight, tiny_npz, tmp_path, capsys):
    _, _, s_dir = straight
    run_dir = tmp_path / "run"
    _, first = run(tiny_config(tiny_npz), run_dir, stop_after=100)
    csv_before = (run_dir / "metrics.csv").read_text()
    holder = _python(  # another process holding the run, as a training process does
        "import sys, time\nfrom metaconstraint.rundir import RunLock\n"
        f"RunLock({str(run_dir)!r}).acquire(); print('locked', flush=True); time.sleep(120)"
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        for argv in (tiny_train_args(tiny_npz, run_dir), ["train", "--resume", run_dir, "--quiet"]):
            code, _, err = main(argv, capsys)
            assert code == 2, err
            assert f"is in use by another metaconstraint process (PID {holder.pid})" in err, err
        assert (run_dir / "metrics.csv").read_text() == csv_before  # nothing written by the refused processes
    finally:
        holder.kill()  # SIGKILL: the OS drops the lock with the process
        holder.wait()
    resumed = Trainer.resume(run_dir, **quiet())
    assert resumed.train().status == "finished"
    assert metric_rows(run_dir) == metric_rows(s_dir)  # every step once, as in an uninterrupted run


def test_two_trainers_in_one_process_cannot_share_a_directory(tiny_npz, tmp_path):
    run_dir = tmp_path / "run"
    first = Trainer(tiny_config(tiny_npz, steps=100), run_dir, **quiet())

    def hook(trainer):  # while the first trainer runs, a second one tries the same directory
        update = trainer.agent.update

        def wrapped(batch):
            if trainer.agent.num_updates == 10:
                with pytest.raises(RunError, match=f"in use by another metaconstraint process \\(PID {os.getpid()}\\)"):
                    Trainer(tiny_config(tiny_npz, steps=100), run_dir, **quiet()).train()
            return update(batch)

        trainer.agent.update = wrapped

    first.setup()
    hook(first)
    assert first.train().status == "finished"
    assert [int(r["step"]) for r in metric_rows(run_dir)] == [0, 50, 100]


# -- case 3: checksummed checkpoints -------------------------------------------------------------------


def flip_tensor_byte(path: Path, tensor: torch.Tensor) -> None:
    """Flip one byte inside ``tensor``'s stored data in the checkpoint file (the zip stays valid)."""
    raw = bytearray(path.read_bytes())
    needle = tensor.detach().contiguous().numpy().tobytes()
    at = raw.find(needle)
    assert at >= 0
    raw[at + len(needle) // 2] ^= 0x10
    path.write_bytes(bytes(raw))


def test_flipped_bytes_in_tensor_data_are_detected(straight, tmp_path):
    _, _, s_dir = straight
    path = tmp_path / "step_00000600.pt"
    path.write_bytes(latest_checkpoint(s_dir).read_bytes())
    state = load_checkpoint(path)
    flip_tensor_byte(path, state["agent"]["actor"]["net.0.weight"])
    torch.load(path, weights_only=True)  # the file still reads: only the checksum can tell
    with pytest.raises(CheckpointError, match="is damaged: its content does not match the SHA-256 stored in it"):
        load_checkpoint(path)


def test_resume_skips_a_damaged_newest_checkpoint_and_ends_like_a_straight_run(straight, tiny_npz, tmp_path):
    s_trainer, _, s_dir = straight
    run_dir = tmp_path / "run"
    run(tiny_config(tiny_npz), run_dir, stop_after=300)
    newest = latest_checkpoint(run_dir)
    critic = load_checkpoint(newest)["agent"]["critic"]
    flip_tensor_byte(newest, next(v for k, v in critic.items() if k.endswith("weight")))
    lines = []
    resumed = Trainer.resume(run_dir, progress=False, echo=lines.append, plots=False)
    assert resumed.train().status == "finished"
    said = "\n".join(lines)
    assert "step_00000300.pt' is damaged" in said and "moved it aside to step_00000300.pt.damaged" in said
    assert "resuming from the newest intact checkpoint instead: step_00000200.pt" in said
    assert (run_dir / "checkpoints" / "step_00000300.pt.damaged").exists()  # kept, not deleted
    same_agent(s_trainer, resumed)
    assert metric_rows(run_dir) == metric_rows(s_dir)


def test_resume_from_a_chosen_checkpoint(straight, tiny_npz, tmp_path, capsys):
    s_trainer, _, s_dir = straight
    run_dir = tmp_path / "run"
    run(tiny_config(tiny_npz), run_dir, stop_after=300)
    code, out, err = main(["train", "--resume", run_dir, "--checkpoint", "200", "--no-plots"], capsys)
    assert code == 0, err
    assert "resuming" in out and "from step 200 (step_00000200.pt)" in out
    assert metric_rows(run_dir) == metric_rows(s_dir)
    code, _, err = main(["train", "--resume", run_dir, "--checkpoint", "250"], capsys)
    assert code == 2 and "has no checkpoint for step 250" in err


def test_a_checkpoint_without_checksum_still_loads_with_a_notice(straight, tmp_path):
    _, _, s_dir = straight
    state = load_checkpoint(latest_checkpoint(s_dir))
    old = tmp_path / "old.pt"
    torch.save(state, old)  # as metaconstraint wrote checkpoints before checksums
    with pytest.warns(CheckpointNotice, match="has no checksum"):
        again = load_checkpoint(old)
    assert again["step"] == 600
    said = []
    load_checkpoint(old, echo=said.append)
    assert said and "loaded unverified" in said[0]
    assert torch.load(latest_checkpoint(s_dir), weights_only=True)["sha256"] == checkpoint_digest(state)


def test_leftover_temp_files_are_removed_on_the_next_start(tiny_npz, tmp_path):
    run_dir = tmp_path / "run"
    run(tiny_config(tiny_npz, steps=200), run_dir, stop_after=100)
    junk = [run_dir / "checkpoints" / ".step_00000200.pt.4242.tmp", run_dir / ".summary.json.4242.tmp"]
    for p in junk:
        p.write_bytes(b"half a write")
    keep = run_dir / "notes.tmp"  # not a name metaconstraint writes: left alone
    keep.write_text("mine")
    Trainer.resume(run_dir, **quiet()).train()
    assert not any(p.exists() for p in junk) and keep.exists()


# -- case 4: fail before training -----------------------------------------------------------------------


def test_a_dataset_without_a_usable_env_fails_before_step_one(tmp_path, capsys):
    path = write_tiny_npz(tmp_path / "noenv.npz", episodes=1)
    arrays = dict(np.load(path))
    del arrays["env_id"]
    np.savez(path, **arrays)
    unknown = tmp_path / "unknown.npz"
    np.savez(unknown, **{**arrays, "env_id": np.array("NoSuchEnv-v0")})
    for data, message in ((path, "does not name its environment"), (unknown, "NoSuchEnv-v0")):
        run_dir = tmp_path / f"run-{data.stem}"
        t0 = time.perf_counter()
        code, _, err = main(tiny_train_args(data, run_dir, steps=5000), capsys)
        assert code == 2 and message in err and "Training would fail at its first evaluation" in err, err
        assert time.perf_counter() - t0 < 20  # not after 5000 steps
        assert not run_dir.exists()  # nothing written


def test_a_bad_eval_seed_is_a_config_error():
    with pytest.raises(ConfigError, match="eval_seed must be >= 0"):
        resolve(sets=["eval_seed=-1"])


def test_a_failed_evaluation_writes_checkpoint_and_summary_first_and_resume_redoes_it(straight, tiny_npz, tmp_path, monkeypatch):
    import metaconstraint.outputs as outputs

    s_trainer, _, s_dir = straight
    real = outputs.evaluate_policy

    def broken(*a, **k):
        if k.get("seed") is not None and not hasattr(broken, "done"):
            broken.done = True  # the step-0 evaluation of the untrained policy still works
            return real(*a, **k)
        raise RuntimeError("the simulator crashed")

    monkeypatch.setattr(outputs, "evaluate_policy", broken)
    run_dir = tmp_path / "run"
    with pytest.raises(RunError, match=r"evaluation at step 300 failed: RuntimeError: the simulator crashed\. The checkpoint .*step_00000300\.pt"):
        run(tiny_config(tiny_npz), run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["step"] == 300 and "simulator crashed" in summary["error"]["message"]
    assert load_checkpoint(latest_checkpoint(run_dir))["trainer"]["pending_row"] == 300
    monkeypatch.setattr(outputs, "evaluate_policy", real)
    resumed = Trainer.resume(run_dir, **quiet())
    assert resumed.train().status == "finished"
    same_agent(s_trainer, resumed)
    assert metric_rows(run_dir) == metric_rows(s_dir)  # the step-300 evaluation was redone


# -- case 5: settings -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "setting, message",
    [
        ("actor_lr=-1", "agent.actor_lr (aspc) must be > 0, got -1.0"),
        ("actor_hidden=0", "agent.actor_hidden (aspc) must be an integer >= 1, got (0,)"),
        ("actor_hidden=-4", "agent.actor_hidden (aspc) must be an integer >= 1, got (-4,)"),
        ("critic_width=0", "agent.critic_width (aspc) must be an integer >= 1, got 0"),
        ("actor_lr=nan", "agent.actor_lr (aspc) must be a finite number, got nan"),
        ("critic_lr=inf", "agent.critic_lr (aspc) must be a finite number, got inf"),
        ("constraint.lr=nan", "agent.constraint.lr (aspc) must be a finite number, got nan"),
        ("constraint.every=0", "agent.constraint.every (aspc) must be an integer >= 1"),
        ("constraint.ema_decay=1.5", "agent.constraint.ema_decay (aspc) must be in [0, 1)"),
        ("constraint.lr_decay_to=0", "agent.constraint.lr_decay_to (aspc) must be in (0, 1]"),
        ("reward_scale=nan", "reward_scale must be a finite number"),
    ],
)
def test_out_of_range_settings_are_refused_naming_the_key(setting, message):
    with pytest.raises(ConfigError) as info:
        resolve(flags={"algo": "aspc"}, sets=[setting])
    assert message in str(info.value)


def test_the_default_settings_of_every_algorithm_pass_the_range_checks():
    from metaconstraint.algos import ALGORITHMS

    for algo in ALGORITHMS:
        for preset in ("quick", "paper"):
            resolve(flags={"algo": algo, "preset": preset})


def test_a_saturating_learned_coefficient_is_reported(tiny_npz, tmp_path):
    said = []
    trainer = Trainer(tiny_config(tiny_npz, steps=100, eval_every=0), tmp_path / "run", progress=False,
                      echo=said.append, plots=False)
    trainer.config.agent.constraint.lr = 1e8
    result = trainer.train()
    assert result.status == "finished"
    warning = [w for w in result.summary["warnings"] if w.startswith("alpha saturated")]
    assert warning and any("warning: alpha saturated" in s for s in said)
    assert not (1e-3 < result.summary["coef_end"] < 1e3)
    # a fixed coefficient far from 1 is not "saturated"
    fixed_config = resolve(flags={"algo": "td3bc", "dataset": str(tiny_npz), "steps": 50, "eval_every": 0},
                           sets=["agent.actor_hidden=16,16", "agent.critic_width=16", "batch_size=64", "agent.alpha=5000"])
    fixed = Trainer(fixed_config, tmp_path / "fixed", **quiet())
    assert fixed.train().summary["warnings"] == []


# -- case 6: messages instead of tracebacks -----------------------------------------------------------


def test_a_binary_config_file_is_a_message(tmp_path, capsys):
    cfg = tmp_path / "config.yaml"
    cfg.write_bytes(bytes(range(256)))
    code, _, err = main(["train", "--config", cfg, "--quiet"], capsys)
    assert code == 2 and "is not a text (YAML) file" in err and "Traceback" not in err


def test_an_invalid_run_dir_is_a_message(tiny_npz, tmp_path, capsys):
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    for run_dir in (a_file, a_file / "run"):
        code, _, err = main(tiny_train_args(tiny_npz, run_dir, steps=10), capsys)
        assert code == 2 and f"cannot create the run directory '{run_dir}'" in err, err
    assert a_file.read_text() == "x"


def test_a_full_disk_while_checkpointing_keeps_the_previous_checkpoint(tiny_npz, tmp_path, monkeypatch):
    real_save = torch.save
    calls = []

    def full_disk(obj, f, *a, **k):
        calls.append(1)
        if len(calls) == 2:
            f.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", full_disk)
    run_dir = tmp_path / "run"
    with pytest.raises(RunError, match=r"could not write the checkpoint .*step_00000200\.pt at step 200: No space left "
                                        r"on device\. The previous checkpoint .*step_00000100\.pt is intact"):
        run(tiny_config(tiny_npz, steps=300), run_dir)
    monkeypatch.undo()
    assert [s for s, _ in list_checkpoints(run_dir)] == [100]
    assert load_checkpoint(latest_checkpoint(run_dir))["step"] == 100
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == ["step_00000100.pt"]  # no temp file left
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "failed"


def test_resume_repairs_partial_last_lines_of_the_metrics_files(straight, tiny_npz, tmp_path):
    _, _, s_dir = straight
    run_dir = tmp_path / "run"
    run(tiny_config(tiny_npz), run_dir, stop_after=300)
    with open(run_dir / "metrics.csv", "a") as f:
        f.write("3")  # the start of the row for step 350, cut by a kill: reads as step 3
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write('{"step": 3')
    said = []
    Trainer.resume(run_dir, progress=False, echo=said.append, plots=False).train()
    assert metric_rows(run_dir) == metric_rows(s_dir)
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == [0, *range(50, 601, 50)]
    assert any("dropped a partial last line" in s for s in said)


def test_a_dataset_that_changed_size_since_the_start_is_refused_on_resume(tmp_path, capsys):
    data = write_tiny_npz(tmp_path / "data.npz", episodes=2)
    run_dir = tmp_path / "run"
    run(tiny_config(data, steps=200), run_dir, stop_after=100)
    write_tiny_npz(data, episodes=3)
    code, _, err = main(["train", "--resume", run_dir, "--quiet"], capsys)
    assert code == 2 and "has changed since the run started: dataset_size was 400 and is 600 now" in err, err


def test_report_and_plot_skip_a_broken_summary_with_a_warning(tiny_npz, tmp_path, capsys):
    root = tmp_path / "runs"
    for seed in (0, 1):
        assert cli.main([str(a) for a in tiny_train_args(tiny_npz, root / f"s{seed}", seed=seed, steps=50)]) == 0
    (root / "s1" / "summary.json").write_text('{"status": "finish')
    capsys.readouterr()
    with pytest.warns(UserWarning, match="skipping the damaged .*s1/summary.json"):
        code, out, err = main(["report", root], capsys)
    assert code == 0 and "s1" in out and "left out" in out
    with pytest.warns(UserWarning, match="skipping the damaged"):
        code, out, err = main(["plot", root, "--out", tmp_path / "plots"], capsys)
    assert code == 0 and "2 run(s) plotted" in out


def test_eval_on_a_missing_cuda_says_so(straight, capsys):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    _, _, s_dir = straight
    code, _, err = main(["eval", "--run-dir", s_dir, "--device", "cuda"], capsys)
    assert code == 2 and "CUDA is not available here" in err and "damaged" not in err, err


def test_sigterm_during_a_long_evaluation_stops_promptly(tiny_npz, tmp_path, monkeypatch):
    import metaconstraint.outputs as outputs

    real = outputs.evaluate_policy
    sent = []

    def evaluate_then_signal(*a, **k):
        timer = threading.Timer(0.3, lambda: (sent.append(time.perf_counter()), os.kill(os.getpid(), signal.SIGTERM)))
        timer.start()
        try:
            return real(*a, **k)
        finally:
            timer.cancel()

    monkeypatch.setattr(outputs, "evaluate_policy", evaluate_then_signal)
    config = resolve(flags={"algo": "aspc", "dataset": str(tiny_npz), "steps": 100, "eval_every": 50, "seed": 0},
                     sets=["agent.actor_hidden=16,16", "agent.critic_width=16", "batch_size=64", "log_every=50",
                           "checkpoint_every=0", "eval_episodes=10000"])  # 2M env steps: about 30 s uninterrupted
    run_dir = tmp_path / "run"
    _, result = run(config, run_dir)
    stopped = time.perf_counter()
    assert sent and stopped - sent[0] < 1.0, "the run did not stop promptly"
    print(f"stopped {stopped - sent[0]:.3f} s after the signal")
    # the signal arrives during the first evaluation: the untrained policy's, at step 0
    assert result.status == "interrupted" and result.signal == signal.SIGTERM and result.step == 0
    state = load_checkpoint(latest_checkpoint(run_dir))
    assert state["step"] == 0 and state["trainer"]["pending_row"] == 0  # a resume evaluates step 0 again
    assert not (run_dir / "metrics.csv").exists()  # no row for step 0 without its evaluation


def test_a_run_killed_before_its_first_checkpoint_starts_over_on_resume(straight, tiny_npz, tmp_path):
    _, _, s_dir = straight
    run_dir = tmp_path / "run"
    run(tiny_config(tiny_npz), run_dir, stop_after=100)
    for _, p in list_checkpoints(run_dir):  # as if killed between the first rows and the first checkpoint
        p.unlink()
    said = []
    assert Trainer.resume(run_dir, progress=False, echo=said.append, plots=False).train().status == "finished"
    assert any("stopped before its first checkpoint: starting it over from step 0" in s for s in said)
    assert metric_rows(run_dir) == metric_rows(s_dir)
