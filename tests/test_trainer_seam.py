"""The Trainer's per-step seam (next_batch / agent.update / after_update): a driver that steps several
trainers in lockstep by those calls writes the same runs as each trainer's own train()."""

from __future__ import annotations

import contextlib

from metaconstraint.rundir import load_checkpoint, latest_checkpoint
from metaconstraint.training import Trainer
from tests.test_training import flat_tensors, metric_rows, run, tiny_config, tiny_npz  # noqa: F401 (a fixture)


def drive_in_lockstep(trainers: list[Trainer]) -> list:
    """What a multi-seed driver does: every trainer locked, started and in its session; one update
    call per trainer per step (a driver would batch these into one); each trainer records its own."""
    with contextlib.ExitStack() as stack:
        for t in trainers:
            stack.enter_context(t.locked())
            assert t.start()
            stack.enter_context(t.session())
            assert not t.catch_up()
        while any(t.step < t.end for t in trainers):
            batches = [t.next_batch() for t in trainers]
            logs = [t.agent.update(b) for t, b in zip(trainers, batches)]  # the call a driver replaces
            for t, out in zip(trainers, logs):
                assert not t.after_update(out)
    return [t.finish() for t in trainers]


def test_lockstep_driver_writes_what_train_writes(tiny_npz, tmp_path):
    configs = [tiny_config(tiny_npz, steps=200, seed=s) for s in (0, 1)]
    straight = [run(c, tmp_path / f"straight{i}")[1] for i, c in enumerate(configs)]
    driven = drive_in_lockstep([Trainer(c, tmp_path / f"driven{i}", progress=False, echo=None, plots=False)
                                for i, c in enumerate(configs)])
    for a, b in zip(straight, driven):
        assert b.status == a.status == "finished" and b.step == a.step == 200
        assert metric_rows(b.run_dir) == metric_rows(a.run_dir)
        sa, sb = (flat_tensors(load_checkpoint(latest_checkpoint(r.run_dir))["agent"]) for r in (a, b))
        assert sa.keys() == sb.keys() and all(
            (sa[k] == sb[k]).all() if hasattr(sa[k], "shape") else sa[k] == sb[k] for k in sa)
    assert metric_rows(driven[0].run_dir) != metric_rows(driven[1].run_dir)  # two seeds, two runs
