"""Several seeds in one process (SeedEnsemble): equal to separate runs, no host syncs, resumable."""

from __future__ import annotations

import io

import pytest
import torch

from metaconstraint.algos.base import NonFiniteError
from metaconstraint.algos.ensemble import SeedEnsemble

from .host_reads import count_host_reads
from .test_aspc import actor_critic_params, random_batch, small

F64 = torch.float64
SEEDS = (0, 1, 2)


def seed_batches(n: int, dtype=F64, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return [[random_batch(gen, n=32, dtype=dtype) for _ in SEEDS] for _ in range(n)]


def tiny_ensemble(name, dtype=F64, **kw):
    kw.setdefault("actor_hidden", (16, 16))
    kw.setdefault("critic_width", 16)
    kw.setdefault("planned_steps", 1000)
    return SeedEnsemble(name, SEEDS, 3, 2, max_action=1.0, dtype=dtype, **kw)


def max_rel_diff(ens: SeedEnsemble, agents) -> float:
    ens.sync_to_agents()
    worst = 0.0
    for member, ref in zip(ens.agents, agents):
        a, b = actor_critic_params(member), actor_critic_params(ref)
        for k in b:
            worst = max(worst, float((a[k] - b[k]).abs().max() / b[k].abs().max().clamp_min(1e-12)))
        worst = max(worst, abs(float(member.constraint.value()) - float(ref.constraint.value())))
    return worst


@pytest.mark.parametrize("name, extra", [("td3bc", {"critic": "robust"}), ("aspc", {"constraint": {"every": 2, "lr": 0.05}}),
                                         ("aspc", {"constraint": {"every": 3, "horizon": 2, "delta_q": "step"}}),
                                         ("aspc", {"constraint": {"every": 2, "lr": 0.05}, "outer_batch": "fresh"})])  # fmt: skip
def test_vmapped_seeds_equal_separate_runs_float64(name, extra):
    batches = seed_batches(200)
    ens = tiny_ensemble(name, **extra)
    agents = [small(name, dtype=F64, seed=s, **extra) for s in SEEDS]
    for step in batches:
        logs = ens.update(step)
        ref_logs = [agent.update(b) for agent, b in zip(agents, step)]
    assert max_rel_diff(ens, agents) <= 1e-10
    for k, v in ref_logs[0].items():  # the logs of the last update, per seed
        assert v.shape == () and logs[k].shape == (3,)
        assert torch.allclose(logs[k], torch.stack([r[k] for r in ref_logs]), rtol=1e-9, atol=1e-12), k
    if name == "aspc":
        assert len({float(a.constraint.value()) for a in agents}) == 3  # three coefficients, each its own
        assert all(float(a.constraint.value()) != 2.5 for a in agents)


def test_vmapped_seeds_float32_tolerance():
    """float32: the vmapped kernels batch differently, so agreement is to rounding (stated: 1e-4 relative)."""
    batches = seed_batches(100, dtype=torch.float32)
    ens = tiny_ensemble("aspc", dtype=torch.float32, constraint=dict(every=2))
    agents = [small("aspc", seed=s, constraint=dict(every=2)) for s in SEEDS]
    for step in batches:
        ens.update(step)
        for agent, b in zip(agents, step):
            agent.update(b)
    assert max_rel_diff(ens, agents) <= 1e-4


def test_no_host_sync_between_log_points():
    """An update reads nothing back to the host (every Tensor reader is counted, tests/host_reads.py)."""
    batches = seed_batches(12)
    ens = tiny_ensemble("aspc", constraint=dict(every=2))
    ens.update(batches[0])  # warm-up outside the count
    with count_host_reads() as calls:
        for step in batches[1:]:  # 11 updates: actor steps and two coefficient updates among them
            ens.update(step)
        assert calls == [], calls
        ens.check_finite()  # the log point: one read
    assert calls == ["tolist"]


def test_nonfinite_is_raised_at_the_log_point_naming_the_seed():
    """Seed 1's rewards are NaN at update 1: the check names seed 1, the update and the field; seed 1's
    NaN hypergradient (update 2, an alpha update) leaves its alpha where it was, the others' move."""
    ens = tiny_ensemble("aspc", constraint={"every": 1})
    steps = seed_batches(2)
    bad = steps[0][1]._replace(rewards=steps[0][1].rewards.clone().fill_(float("nan")))
    rho = ens.state["coef"].rho.clone()
    ens.update([steps[0][0], bad, steps[0][2]])
    ens.update(steps[1])
    with pytest.raises(NonFiniteError, match=r"critic loss is nan at update 1 in seed\(s\) \[1\]") as info:
        ens.check_finite()
    assert (info.value.step, info.value.bad_fields, info.value.members) == (1, ["rewards"], [1])
    moved = ens.state["coef"].rho != rho
    assert moved.tolist() == [True, False, True]
    ens.check_finite()  # reported once: the next check starts afresh (seed 1 stays NaN from here on)


@pytest.mark.parametrize("outer_batch", ["same", "fresh"])
def test_checkpoint_of_each_seed_resumes_the_ensemble_exactly(outer_batch):
    batches = seed_batches(60)
    ens = tiny_ensemble("aspc", constraint=dict(every=2), outer_batch=outer_batch)
    for step in batches[:31]:  # an odd step: with outer_batch="fresh" the next coefficient step needs this batch
        ens.update(step)
    ens.sync_to_agents()
    files = []
    for agent in ens.agents:  # one checkpoint per seed, as each seed's run directory holds
        buf = io.BytesIO()
        torch.save(agent.state_dict(), buf)
        buf.seek(0)
        files.append(buf)
    for step in batches[31:]:
        ens.update(step)
    resumed = tiny_ensemble("aspc", constraint=dict(every=2), outer_batch=outer_batch)
    for agent, buf in zip(resumed.agents, files):
        agent.load_state_dict(torch.load(buf, weights_only=True))
    resumed.load_from_agents()
    for step in batches[31:]:
        resumed.update(step)
    ens.sync_to_agents()
    assert max_rel_diff(resumed, ens.agents) == 0.0


def test_unsupported_settings_are_refused():
    with pytest.raises(ValueError, match="not 'iql'"):
        SeedEnsemble("iql", SEEDS, 3, 2)
    with pytest.raises(ValueError, match="distinct"):
        SeedEnsemble("td3bc", [0, 0], 3, 2)
    with pytest.raises(ValueError, match="one batch per seed"):
        tiny_ensemble("td3bc").update(seed_batches(1)[0][:2])
