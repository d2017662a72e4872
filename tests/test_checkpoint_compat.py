"""Checkpoints written before the twin critics became one vmapped ensemble still load and resume.

``tests/golden/legacy/<case>.pt`` holds an agent's state after 60 golden updates in the former layout
(``critic.q1.*`` / ``critic.q2.*`` and one optimizer entry per critic's parameter), recorded by
``tests/golden/make_legacy_checkpoints.py`` with the code of that time, and ``<case>.npz`` what
that code computed over the next 40 updates. Today's agent loaded from the file must compute the same.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from metaconstraint.nets import CriticEnsemble

from .golden.make_golden import batches, tiny_agent
from .golden.make_legacy_checkpoints import CASES, FOLDER, MORE, SAVED, replay

TOL = 1e-10


def load_legacy(case: str):
    algo, overrides = CASES[case]
    agent = tiny_agent(algo, **overrides)
    state = torch.load(FOLDER / f"{case}.pt", weights_only=True)
    assert any(k.startswith("q1.") for k in state["critic"]), "the fixture is not in the former layout"
    agent.load_state_dict(state)
    return agent, state


@pytest.mark.parametrize("case", list(CASES))
def test_former_layout_loads_and_resumes_exactly(case):
    agent, state = load_legacy(case)
    for k, v in state["critic"].items():  # every per-critic entry landed in its member
        assert torch.equal(agent.critic.member_state_dict()[k], v), k
    ref = np.load(FOLDER / f"{case}.npz", allow_pickle=False)
    now = replay(agent, batches(SAVED + MORE)[SAVED:])
    assert set(now) == set(ref.files)
    worst = max(float(np.nanmax(np.abs(now[k] - ref[k])) / max(1.0, float(np.nanmax(np.abs(ref[k]))))) for k in ref.files)
    assert worst <= TOL, f"{case}: resumed from the former layout, differs by {worst:.3g}"


def test_resuming_without_the_optimizer_state_is_seen():
    """The replay is sensitive to the critic optimizer's moments: zeroing them changes the result."""
    agent, state = load_legacy("td3bc")
    for s in agent.critic_opt.state.values():
        s["exp_avg"].zero_()
    ref = np.load(FOLDER / "td3bc.npz", allow_pickle=False)
    now = replay(agent, batches(SAVED + MORE)[SAVED:])
    assert float(np.max(np.abs(now["critic.q1.net.0.weight"] - ref["critic.q1.net.0.weight"]))) > 1e-6


def test_ensemble_is_its_members_stacked():
    """``CriticEnsemble`` computes what its member critics compute, each on its own parameters."""
    from metaconstraint.nets import make_critic

    torch.manual_seed(0)
    members = [make_critic("robust", 3, 2, width=8) for _ in range(3)]
    ensemble = CriticEnsemble(members)
    obs, act = torch.randn(5, 3), torch.randn(5, 2)
    q = ensemble(obs, act)
    assert q.shape == (3, 5)
    for j, m in enumerate(members):
        torch.testing.assert_close(q[j], m(obs, act), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(ensemble.q1(obs, act), members[0](obs, act), rtol=0, atol=0)
    state = ensemble.state_dict()
    assert state["net.0.weight"].shape == (3, 8, 5)


def test_a_former_checkpoint_missing_a_critic_is_refused():
    agent, state = load_legacy("td3bc")
    broken = {k: v for k, v in state["critic"].items() if k != "q2.net.0.weight"}
    with pytest.raises(KeyError, match="q\\*.net.0.weight is missing"):
        agent.critic.load_state_dict(broken)


@pytest.mark.parametrize("algo", ["td3bc", "aspc", "rebrac", "rebrac-adaptive", "a2pr", "wpc", "iql", "cql"])
def test_every_twin_critic_is_one_ensemble(algo):
    """Each algorithm's two critics are one two-member ensemble, and so are its target critics."""
    agent = tiny_agent(algo)
    for part in ("critic", "critic_target"):
        module = getattr(agent, part)
        assert isinstance(module, CriticEnsemble) and module.size == 2, (algo, part)
    assert all(p.shape[0] == 2 for p in agent.critic.parameters())  # stacked: one tensor per layer for both
    obs, act = torch.randn(4, 3, dtype=torch.float64), torch.rand(4, 2, dtype=torch.float64)
    q = agent.critic(obs, act)
    assert q.shape == (2, 4) and not torch.allclose(q[0], q[1])  # two independently initialised critics
