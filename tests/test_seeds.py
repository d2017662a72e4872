"""Several seeds in one process (metaconstraint.seeds): each seed a run of its own, one vmapped update for all."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from metaconstraint.algos.base import NonFiniteError
from metaconstraint.rundir import latest_checkpoint, list_checkpoints, load_checkpoint
from metaconstraint.seeds import SeedsTrainer, seeds_root_of
from metaconstraint.training import Trainer, TrainingDiverged
from tests.host_reads import count_host_reads, optimizer_step_tensors
from tests.test_training import flat_tensors, metric_rows, run, tiny_config, tiny_npz  # noqa: F401 (a fixture)

STEPS = 120  # rows every 50 steps, checkpoints every 100, evaluations at 60 and 120
QUIET = dict(progress=False, echo=None, plots=False)


def _config(tiny_npz, **flags):
    return tiny_config(tiny_npz, steps=STEPS, eval_every=60, **flags)


def _params(run_dir):
    state = load_checkpoint(latest_checkpoint(run_dir))["agent"]
    return {k: v for k, v in flat_tensors(state).items() if isinstance(v, torch.Tensor) and v.is_floating_point()}


@pytest.fixture(scope="module")
def lockstep(tiny_npz, tmp_path_factory):
    """ASPC seeds 0 and 1 trained together, straight through."""
    root = tmp_path_factory.mktemp("seeds") / "straight"
    results = SeedsTrainer.new(_config(tiny_npz), [0, 1], root, **QUIET).train()
    return root, results


def test_each_seed_is_its_own_run_and_matches_its_separate_run(lockstep, tiny_npz, tmp_path):
    root, results = lockstep
    assert [r.status for r in results] == ["finished", "finished"]
    assert [r.run_dir for r in results] == [root / "seed0", root / "seed1"] == seeds_root_of(root)
    for seed in (0, 1):
        alone = tmp_path / f"alone{seed}"
        run(_config(tiny_npz, seed=seed), alone)
        together = root / f"seed{seed}"
        assert load_checkpoint(latest_checkpoint(together))["config"]["seed"] == seed
        assert [s for s, _ in list_checkpoints(together)] == [s for s, _ in list_checkpoints(alone)] == [100, 120]
        rows_t, rows_a = metric_rows(together), metric_rows(alone)
        assert [r["step"] for r in rows_t] == [r["step"] for r in rows_a]
        assert list(rows_t[0]) == list(rows_a[0])
        # float32: the vmapped (batched) kernels round differently from the separate run's
        pt, pa = _params(together), _params(alone)
        assert pt.keys() == pa.keys()
        for k in pa:
            err = (pt[k] - pa[k]).abs().max() / pa[k].abs().max().clamp_min(1e-6)
            assert err < 1e-3, (seed, k, float(err))
        alpha_t, alpha_a = (float(r["alpha"]) for r in (rows_t[-1], rows_a[-1]))
        assert alpha_t == pytest.approx(alpha_a, rel=1e-4)
    # the seeds are different runs
    assert not torch.equal(_params(root / "seed0")["actor.net.0.weight"], _params(root / "seed1")["actor.net.0.weight"])


def test_lockstep_resume_is_exact_and_a_seed_continues_alone(lockstep, tiny_npz, tmp_path):
    root, _ = lockstep
    cut = tmp_path / "cut"
    stopped = SeedsTrainer.new(_config(tiny_npz), [0, 1], cut, **QUIET).train(stop_after=50)
    assert [r.status for r in stopped] == ["stopped", "stopped"] and [r.step for r in stopped] == [50, 50]
    resumed = SeedsTrainer.resume(cut, **QUIET).train()
    assert [r.status for r in resumed] == ["finished", "finished"]
    for seed in (0, 1):
        a, b = _params(root / f"seed{seed}"), _params(cut / f"seed{seed}")
        assert all(torch.equal(a[k], b[k]) for k in a), seed  # bit for bit
        assert metric_rows(root / f"seed{seed}") == metric_rows(cut / f"seed{seed}")
    # one seed's directory is an ordinary run: it continues alone
    alone = tmp_path / "alone"
    SeedsTrainer.new(_config(tiny_npz), [0, 1], alone, **QUIET).train(stop_after=50)
    result = Trainer.resume(alone / "seed1", **QUIET).train()
    assert result.status == "finished" and result.step == STEPS
    a, b = _params(root / "seed1"), _params(alone / "seed1")
    assert max(float((a[k] - b[k]).abs().max() / b[k].abs().max().clamp_min(1e-6)) for k in a) < 1e-3


def test_no_host_reads_between_rows(tiny_npz, tmp_path):
    """Neither the ordinary loop nor the lockstep one reads a value back between rows and checkpoints."""
    # the ordinary trainer
    config = _config(tiny_npz)
    t = Trainer(config, tmp_path / "one", **QUIET)
    counts = []
    with t.locked():
        t.start()
        with t.session():
            t.catch_up()
            while t.step < t.end:
                due = t.due(t.step + 1)
                with count_host_reads(optimizer_step_tensors(t.agent.critic_opt)) as calls:
                    t.after_update(t.agent.update(t.next_batch()))
                if not (due[0] or due[2]) and t.step > 1:  # update 1: torch.optim.Adam makes its CPU step counts
                    counts.append(len(calls))
        t.finish()
    assert len(counts) == STEPS - 5 and set(counts) == {0}  # rows at 50, 100, 120 (+60 eval); checkpoints at 100, 120
    # the lockstep driver: the ensemble's update and each trainer's bookkeeping
    st = SeedsTrainer.new(config, [0, 1], tmp_path / "two", **QUIET)
    reads = []
    original_update = None

    def counted_train():
        nonlocal original_update
        from metaconstraint.algos import ensemble as ens

        original_update = ens.SeedEnsemble.update

        def update(self, batches):
            with count_host_reads() as calls:
                out = original_update(self, batches)
            reads.append(len(calls))
            return out

        ens.SeedEnsemble.update = update
        try:
            return st.train()
        finally:
            ens.SeedEnsemble.update = original_update

    assert [r.status for r in counted_train()] == ["finished", "finished"]
    assert len(reads) == STEPS and set(reads) == {0}


def test_a_nan_in_one_seed_stops_all_and_names_the_seed_and_update(tiny_npz, tmp_path):
    st = SeedsTrainer.new(_config(tiny_npz), [0, 1], tmp_path / "nan", **QUIET)
    bad = st.trainers[1]
    bad.setup()
    sample = bad.sampler.sample

    def poisoned():
        batch = sample()
        if bad.step + 1 == 75:
            batch = batch._replace(rewards=torch.full_like(batch.rewards, float("nan")))
        return batch

    bad.sampler.sample = poisoned
    with pytest.raises(TrainingDiverged, match=r"critic loss is nan at step 75 .*rewards") as info:
        st.train()
    assert isinstance(info.value.__cause__, NonFiniteError) and info.value.__cause__.members == [1]
    for t in st.trainers:  # checked before the row at 100: no row or checkpoint after the NaN
        assert [s for s, _ in list_checkpoints(t.run_dir)] == []
        assert max(int(r["step"]) for r in metric_rows(t.run_dir)) == 60  # the last row before the NaN
    summary = json.loads((bad.run_dir / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["error"]["step"] == 75


def test_cli_seeds(tiny_npz, tmp_path):
    def cli(*args):
        return subprocess.run([sys.executable, "-m", "metaconstraint", "train", *args], capture_output=True, text=True)

    bad = cli("--algo", "iql", "--dataset", str(tiny_npz), "--seeds", "0-1", "--run-dir", str(tmp_path / "iql"))
    assert bad.returncode != 0 and "several seeds in one process exist for td3bc, aspc, not 'iql'" in bad.stderr
    both = cli("--dataset", str(tiny_npz), "--seed", "1", "--seeds", "0-1", "--run-dir", str(tmp_path / "x"))
    assert both.returncode != 0 and "not both" in both.stderr
    ok = cli("--algo", "td3bc", "--dataset", str(tiny_npz), "--seeds", "2,5", "--steps", "40", "--eval-every", "0",
             "--eval-episodes", "1", "--set", "agent.actor_hidden=8,8", "agent.critic_width=8", "batch_size=32",
             "--run-dir", str(tmp_path / "ok"), "--quiet", "--no-plots")
    assert ok.returncode == 0, ok.stderr
    lines = [json.loads(x) for x in ok.stdout.splitlines() if x.startswith("{")]
    assert [x["status"] for x in lines] == ["finished", "finished"]
    assert sorted(p.name for p in (tmp_path / "ok").iterdir()) == ["seed2", "seed5"]
    again = cli("--resume", str(tmp_path / "ok"), "--quiet", "--no-plots")
    assert again.returncode == 0 and "already finished" not in again.stderr
