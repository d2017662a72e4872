"""The captured update (torch.compile, default mode on CPU) equals the eager one to float32 rounding.

Compiling is slow on a CPU (about 20-60 s per kind of update on this 2-core machine), so the
tests compile three graphs in all: ASPC with an actor step and an alpha update at every update
(one kind: the whole update), and two TD3+BC seeds with policy_freq 2 (two kinds). Tolerance
(stated): 1e-5 absolute on parameters (we see ~1e-7) and 5e-5 relative on alpha (we see ~6e-6: the
hypergradient is a second-order quantity and constraint.lr is raised to 0.05 here) after 20 float32
updates; inductor fuses and reorders float32 arithmetic, so bitwise equality is not expected.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch._dynamo.utils import counters

from metaconstraint.algos.base import NonFiniteError
from metaconstraint.algos.capture import counts_as_ints, counts_as_tensors
from metaconstraint.algos.ensemble import CapturedAgent
from metaconstraint.algos.ensemble import SeedEnsemble

from .test_aspc import actor_critic_params, random_batch, small

TOL = 1e-5


@pytest.fixture
def dynamo():
    """Fresh dynamo caches and counters, reset again afterwards (no compiled code leaks into other tests)."""
    torch._dynamo.reset()
    counters.clear()
    yield counters
    torch._dynamo.reset()


def max_diff(a: dict, b: dict) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def test_captured_aspc_update_equals_eager_in_one_graph(dynamo):
    kw = dict(policy_freq=1, constraint={"every": 1, "lr": 0.05})  # every update: critic, actor and alpha
    eager, captured = small("aspc", **kw), CapturedAgent(small("aspc", **kw))
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        batch = random_batch(gen)
        logs, ref = captured.update(batch), eager.update(batch)
    assert set(logs) == set(ref) and max_diff(logs, ref) <= 1e-4  # logs: losses of size ~1-10
    state, ref_state = captured.state_dict(), eager.state_dict()
    assert max_diff(actor_critic_params(captured.agent), actor_critic_params(eager)) <= TOL
    alpha = float(eager.constraint.value())
    assert abs(float(captured.agent.constraint.value()) - alpha) <= 5e-5 * alpha
    assert alpha != 2.5  # alpha moved, through the captured coefficient step too
    assert state["num_updates"] == ref_state["num_updates"] == 20
    assert state["actor_opt_state"][1]["count"] == 20  # counts are ints again in the checkpoint
    assert dynamo["stats"]["unique_graphs"] == 1 and not dynamo["graph_break"]  # one graph: no recompile, no break
    captured.check_finite()
    nan = batch._replace(rewards=batch.rewards.clone().fill_(math.nan))
    captured.update(nan)
    with pytest.raises(NonFiniteError, match=r"critic loss is nan at update 21: .*\['rewards'\]"):
        captured.check_finite()


def test_captured_seed_ensemble_equals_eager_and_compiles_once_per_kind(dynamo):
    """Two kinds of update (critic only; critic + actor + targets): two graphs, one recompile."""
    make = lambda compile: SeedEnsemble("td3bc", [0, 1], 3, 2, actor_hidden=(16, 16), critic_width=16,  # noqa: E731
                                        planned_steps=1000, compile=compile)  # fmt: skip
    eager, captured = make(False), make(True)
    gen = torch.Generator().manual_seed(1)
    for _ in range(20):
        step = [random_batch(gen) for _ in range(2)]
        logs, ref = captured.update(step), eager.update(step)
    assert max_diff(logs, ref) <= 1e-4
    assert max_diff(captured.state["actor"], eager.state["actor"]) <= TOL
    assert max_diff(captured.state["critic"], eager.state["critic"]) <= TOL
    assert dynamo["stats"]["unique_graphs"] == 2 and not dynamo["graph_break"]
    captured.sync_to_agents()
    eager.sync_to_agents()
    for a, b in zip(captured.agents, eager.agents):
        assert a.actor_opt_state[1]["count"] == b.actor_opt_state[1]["count"] == 10  # ints, as eager
        assert max_diff(actor_critic_params(a), actor_critic_params(b)) <= TOL


def test_step_counts_round_trip_as_tensors():
    state = {"opt": ({}, {"count": 7, "mu": {"w": torch.ones(2, 3)}}, {"count": 7}), "other": None}
    tensors, positions = counts_as_tensors(state, 2, "cpu", torch.float32)
    assert [tensors["opt"][1]["count"].tolist(), tensors["opt"][2]["count"].tolist()] == [[7.0, 7.0]] * 2
    back = counts_as_ints(tensors, positions)
    assert back["opt"][1]["count"] == 7 and type(back["opt"][2]["count"]) is int and back["other"] is None
