"""No host reads in any agent's update; NaN/Inf is recorded on the device and raised by ``check_finite``."""

from __future__ import annotations

import math

import pytest
import torch

import metaconstraint as mc
from metaconstraint.algos.base import FiniteGuard, NonFiniteError
from metaconstraint.constraint import FunctionOuter

from .host_reads import count_host_reads, optimizer_step_tensors
from .test_algorithms import random_batch, tiny

ALL = tuple(mc.algos.ALGORITHMS)


def quick_coefficient(name: str) -> dict:
    """Coefficient updates every inner step, so a dozen updates include several."""
    if name == "aspc":
        return {"constraint": {"every": 1}}
    return {"constraint": {"every": 1}} if name.endswith("-adaptive") else {}


def torch_optimizers(agent) -> list[torch.optim.Optimizer]:
    return [v for v in vars(agent).values() if isinstance(v, torch.optim.Optimizer)]


@pytest.mark.parametrize("name", ALL)
def test_update_reads_nothing_back_to_the_host(name):
    """0 reads in 12 updates (critic, actor and coefficient steps), 1 at ``check_finite``. Counted:
    item, tolist, numpy, bool, float, int, index, format, repr of any tensor except the step counts
    ``torch.optim`` keeps on the CPU even for GPU parameters (reading those transfers nothing)."""
    agent = tiny(name, dtype=torch.float64, **quick_coefficient(name))
    gen = torch.Generator().manual_seed(0)
    agent.update(random_batch(gen))  # creates the torch.optim states
    with count_host_reads(exclude=optimizer_step_tensors(*torch_optimizers(agent))) as calls:
        for _ in range(12):
            agent.update(random_batch(gen))
        assert calls == [], calls
        agent.check_finite()
    assert calls == ["tolist"]


@pytest.mark.parametrize("name", ALL)
def test_nan_at_update_k_is_reported_by_the_next_check(name):
    """NaN rewards at update 3 (of 5): the check after update 5 names the critic loss, update 3 and
    the rewards field; a check before it passes, and the event is reported once."""
    agent = tiny(name, **quick_coefficient(name))
    gen = torch.Generator().manual_seed(1)
    batches = [random_batch(gen, dtype=torch.float32) for _ in range(5)]
    batches[2] = batches[2]._replace(rewards=batches[2].rewards.clone().index_fill_(0, torch.tensor([4]), math.nan))
    agent.update(batches[0])
    agent.check_finite()  # finite so far
    for b in batches[1:]:
        agent.update(b)
    with pytest.raises(NonFiniteError) as info:
        agent.check_finite()
    err = info.value
    assert (err.quantity, err.step, err.bad_fields) == ("critic loss", 3, ["rewards"]), str(err)
    assert math.isnan(err.value) and "critic loss is nan at update 3" in str(err)
    agent.check_finite()  # forgotten once reported (no update since)


def test_bad_fields_are_every_non_finite_field_of_that_update():
    agent = tiny("td3bc")
    b = random_batch(torch.Generator().manual_seed(2), dtype=torch.float32)
    bad = b._replace(observations=b.observations.clone().fill_(math.inf), next_actions=b.next_actions.clone().fill_(math.nan))
    agent.update(bad)
    with pytest.raises(NonFiniteError, match=r"\['observations', 'next_actions'\]") as info:
        agent.check_finite()
    assert info.value.bad_fields == ["observations", "next_actions"] and info.value.step == 1


def test_non_finite_hypergradient_leaves_alpha_unchanged_and_is_reported():
    """An outer loss scaled by inf gives an infinite hypergradient while every loss stays finite:
    alpha keeps its value, Adam's moments too, and the check names the hypergradient."""
    agent = tiny("aspc", constraint={"every": 1})
    agent.constraint.outer = FunctionOuter(lambda traj, coef: traj.evaluate(-1, coef.detach()).loss * math.inf)
    gen = torch.Generator().manual_seed(3)
    agent.update(random_batch(gen, dtype=torch.float32))  # critic only (policy_freq 2)
    before = agent.constraint.coefficient.state_dict()
    logs = agent.update(random_batch(gen, dtype=torch.float32))  # actor step + alpha update
    assert not torch.isfinite(logs["hypergrad"]) and torch.isfinite(logs["actor_loss"])
    after = agent.constraint.coefficient.state_dict()
    assert torch.equal(after["rho"], before["rho"])
    mu = lambda s: [x for x in torch.utils._pytree.tree_flatten(s["opt_state"])[0] if isinstance(x, torch.Tensor)]  # noqa: E731
    assert all(torch.equal(x, y) for x, y in zip(mu(after), mu(before)))
    with pytest.raises(NonFiniteError) as info:
        agent.check_finite()
    assert (info.value.quantity, info.value.step, info.value.bad_fields) == ("alpha hypergradient", 2, [])
    assert "the networks diverged" in str(info.value)


def test_a_loaded_checkpoint_starts_a_fresh_record():
    """Events before ``load_state_dict`` belong to the state that was replaced; steps count from the load."""
    agent, other = tiny("td3bc"), tiny("td3bc")
    gen = torch.Generator().manual_seed(4)
    b = random_batch(gen, dtype=torch.float32)
    agent.update(b._replace(rewards=b.rewards.clone().fill_(math.nan)))
    for _ in range(3):
        other.update(random_batch(gen, dtype=torch.float32))
    agent.load_state_dict(other.state_dict())
    agent.check_finite()  # the NaN update was replaced
    agent.update(b._replace(actions=b.actions.clone().fill_(math.nan)))
    with pytest.raises(NonFiniteError) as info:
        agent.check_finite()
    assert (info.value.step, info.value.bad_fields) == (4, ["actions"])


def test_record_all_notes_the_first_non_finite_value_and_its_update_without_host_reads():
    """The trainer's logs go in as one stacked check per update."""
    guard = FiniteGuard("cpu", quantities=["a", "b"])
    ok = {"a": torch.tensor(1.0), "b": torch.tensor(2.0), "c": torch.tensor(3.0)}
    bad = {"a": torch.tensor(1.0), "b": torch.tensor(float("-inf")), "c": torch.tensor(float("nan"))}
    with count_host_reads() as calls:
        for logs in (ok, ok, bad, ok, bad):
            guard.record_all(logs)
            guard.commit()
    assert calls == []
    with pytest.raises(NonFiniteError) as info:
        guard.check(num_updates=5)
    assert (info.value.quantity, info.value.value, info.value.step) == ("b", float("-inf"), 3)
    assert guard.quantities == ["a", "b", "c"]
    guard.record_all(ok)
    guard.commit()
    guard.check(num_updates=6)  # nothing since the last check


def test_several_members_are_named_earliest_first():
    """Seed 1 goes non-finite at update 2, seed 0 at update 3: the error is seed 1's, and it comes first."""
    guard = FiniteGuard("cpu", members=(2,), quantities=["loss"])
    for loss in ([1.0, 1.0], [1.0, math.nan], [math.inf, math.nan]):
        guard.record("loss", torch.tensor(loss))
        guard.commit()
    with pytest.raises(NonFiniteError) as info:
        guard.check(num_updates=3, labels=[10, 11])
    assert (info.value.step, info.value.members) == (2, [11, 10]) and math.isnan(info.value.value)
