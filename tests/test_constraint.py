"""The adaptive constraint on mc.hypergrad: horizon, implicit method, custom outer objectives, vmap, resume."""

from __future__ import annotations

import io

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call
from torch.utils._pytree import tree_flatten, tree_unflatten

from metaconstraint import hypergrad, optim
from metaconstraint.constraint import (
    AdaptiveConstraint,
    AdaptiveConstraintConfig,
    ASPCOuter,
    OuterObjective,
    Terms,
)

from .test_aspc import random_batch, small

F64 = torch.float64


def warmed_aspc(seed: int = 1, updates: int = 30, **kw):
    """A float64 ASPC agent after a few actor and alpha steps (non-trivial Adam moments and Q EMA);
    ``kw``: settings of its constraint block."""
    gen = torch.Generator().manual_seed(seed)
    agent = small("aspc", dtype=F64, constraint=dict(every=3, **kw), seed=seed)
    for _ in range(updates):
        agent.update(random_batch(gen, dtype=F64))
    return agent, random_batch(gen, dtype=F64)


class HeldL1(OuterObjective):
    """ASPC's outer loss with L1's coefficient fixed at ``coef0``: the function whose derivative in
    rho the library's semi-gradient is, so central differences can check it."""

    def __init__(self, base: ASPCOuter, coef0: torch.Tensor):
        self.base, self.coef0 = base, coef0

    def init_memory(self, like):
        return self.base.init_memory(like)

    def __call__(self, trajectory, coef, memory):
        return self.base(trajectory, self.coef0, memory)


def frozen_scale_objective(agent, batch):
    """TD3+BC's actor loss with lambda's normaliser mean|Q| frozen at the current actor: the loss
    detaches it at every iterate, so a finite difference through several steps must hold it fixed."""
    obs, act = batch.observations, batch.actions
    with torch.no_grad():
        qabs = agent.critic.q1(obs, agent.actor(obs)).abs().mean()

    def objective(params, alpha):
        pi = functional_call(agent.actor, params, (obs,))
        q = agent.critic.q1(obs, pi)
        bc = (pi - act).pow(2).mean(dim=1)
        return Terms(loss=-alpha / qabs * q.mean() + bc.mean(), value=q.mean(), constraint=bc)

    return objective


@pytest.mark.parametrize("delta_q", ["ema", "step"])
@pytest.mark.parametrize("horizon", [1, 3, 10])
def test_unrolled_hypergradient_matches_finite_differences(horizon, delta_q):
    """L1 + L2 through 1, 3 and 10 actor steps (L3 multiplies by a detached L2, so its finite
    difference needs the reference of test_aspc.py, which covers it at horizon 1)."""
    agent, batch = warmed_aspc(delta_q=delta_q, terms="L1+L2")
    con = agent.constraint
    con.config.horizon = horizon
    state = con.state
    con.outer = HeldL1(con.outer, F.softplus(state.rho))
    args = (frozen_scale_objective(agent, batch), agent._actor_params(), agent.actor_opt, agent.actor_opt_state)
    fn = lambda h: con.hypergradient(*args, state=state._replace(rho=h["rho"]))  # noqa: E731
    res = fn({"rho": state.rho})
    assert len(res.params) == horizon + 1 and float(res.grads["rho"]) != 0.0
    assert hypergrad.check(fn, {"rho": state.rho}, eps=1e-6) <= 1e-4


def test_longer_horizon_changes_the_hypergradient_but_not_the_training_step():
    agent, batch = warmed_aspc()
    con = agent.constraint
    args = (agent.actor_objective(batch), agent._actor_params(), agent.actor_opt, agent.actor_opt_state)
    out = {}
    for k in (1, 5):
        con.config.horizon = k
        new, step = con.coefficient_step(*args, con.state)
        out[k] = (new, step)
    (_, s1), (_, s5) = out[1], out[5]
    assert float(s1.logs["hypergrad"]) != pytest.approx(float(s5.logs["hypergrad"]), rel=1e-3)
    for k in s1.params:  # training continues from the one real step in both cases
        assert torch.equal(s1.params[k], s5.params[k])
    for x, y in zip(tree_flatten(s1.opt_state)[0], tree_flatten(s5.opt_state)[0]):
        assert torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y


def test_horizon_one_is_the_one_step_lookahead_by_hand():
    """horizon=1 differentiates exactly one Adam step of the actor loss (the paper's ASPC)."""
    agent, batch = warmed_aspc()
    con = agent.constraint
    objective, params = agent.actor_objective(batch), agent._actor_params()
    res = con.hypergradient(objective, params, agent.actor_opt, agent.actor_opt_state)
    rho = con.coefficient.rho.detach().clone().requires_grad_()
    p = {k: v.detach().requires_grad_() for k, v in params.items()}
    before = objective(p, F.softplus(rho))
    g = torch.autograd.grad(before.loss, list(p.values()), create_graph=True)
    upd, _ = agent.actor_opt.update(dict(zip(p, g)), agent.actor_opt_state, p)
    stepped = {k: p[k] + upd[k] for k in p}
    outer = con.outer(hypergrad.Trajectory((p, stepped), (None, None), [before], objective), F.softplus(rho), con.memory)
    (g_rho,) = torch.autograd.grad(outer.loss, rho)
    assert float(res.grads["rho"]) == pytest.approx(float(g_rho), rel=1e-12)


# -- the implicit method: exact at an inner optimum -------------------------------------------------


def quadratic_problem():
    """A linear policy on a quadratic loss ``coef * |pi - a_rl|^2 + |pi - a_data|^2``: its optimum is known."""
    g = torch.Generator().manual_seed(0)
    s = torch.randn(32, 3, generator=g, dtype=F64)
    a_rl, a_data = torch.randn(32, 2, generator=g, dtype=F64), torch.randn(32, 2, generator=g, dtype=F64)

    def objective(params, coef):
        pi = s @ params["W"]
        bc = (pi - a_data).pow(2).mean(1)
        return Terms(coef * (pi - a_rl).pow(2).mean() + bc.mean(), -(pi - a_rl).pow(2).mean(), bc)

    def optimum(coef):  # (1 + coef) S^T S W = S^T (coef a_rl + a_data)
        return {"W": torch.linalg.solve(s.T @ s, s.T @ (coef * a_rl + a_data)) / (1.0 + coef)}

    return objective, optimum


def test_implicit_hypergradient_matches_finite_differences_at_the_optimum():
    objective, optimum = quadratic_problem()
    cfg = AdaptiveConstraintConfig(init=1.5, method="implicit", implicit_iters=400, implicit_lr=0.5)
    con = AdaptiveConstraint(cfg, dtype=F64, outer=lambda traj, coef: traj.evaluate(-1, coef.detach()).constraint.mean())
    opt = optim.adam(1e-2)

    def fn(h):
        coef = F.softplus(h["rho"])
        params = optimum(coef.detach())
        return con.hypergradient(objective, params, opt, opt.init(params), state=con.state._replace(rho=h["rho"]))

    rho0 = con.state.rho
    res = fn({"rho": rho0})
    assert res.info["method"] == "neumann" and res.info["inner_grad_norm"] < 1e-12
    assert float(res.grads["rho"]) != 0.0
    assert hypergrad.check(fn, {"rho": rho0}, eps=1e-6) <= 1e-4


def test_implicit_method_trains_and_steps_like_first_order():
    agent = small("aspc", dtype=F64, constraint=dict(every=2, method="implicit"), seed=3)
    ref = small("aspc", dtype=F64, constraint=dict(every=2), seed=3)
    gen = torch.Generator().manual_seed(4)
    batch = random_batch(gen, dtype=F64)
    a = [agent.update(batch) for _ in range(4)]  # update 4 = actor step 2 = the first alpha update
    r = [ref.update(batch) for _ in range(4)]
    assert torch.isfinite(a[3]["hypergrad"]) and float(a[3]["hypergrad"]) != float(r[3]["hypergrad"])
    for k, v in agent.actor.state_dict().items():  # the real step is the same first-order step
        assert torch.equal(v, ref.actor.state_dict()[k])


# -- user-defined outer objectives ------------------------------------------------------------------


def test_user_defined_outer_objective_is_used_and_differentiated():
    """The README's example: the mean BC loss over the lookahead, with the coefficient held fixed."""

    def bc_along_lookahead(trajectory, coef):
        held = coef.detach()
        return sum(trajectory.evaluate(i, held).constraint.mean() for i in range(1, len(trajectory.params)))

    agent, batch = warmed_aspc()
    con = AdaptiveConstraint(AdaptiveConstraintConfig(horizon=3), dtype=F64, outer=bc_along_lookahead)
    args = (agent.actor_objective(batch), agent._actor_params(), agent.actor_opt, agent.actor_opt_state)
    res = con.hypergradient(*args)
    assert float(res.grads["rho"]) != 0.0
    fn = lambda h: con.hypergradient(*args, state=con.state._replace(rho=h["rho"]))  # noqa: E731
    assert hypergrad.check(fn, {"rho": con.state.rho}) <= 1e-4
    before = float(con.value())
    for _ in range(con.config.every):
        con.step(*args)
    moved = float(con.value()) - before  # one Adam step against the hypergradient's sign
    assert moved != 0.0 and (moved > 0) == (float(res.grads["rho"]) < 0)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="horizon must be an int >= 1"):
        AdaptiveConstraintConfig(horizon=0).validate()
    with pytest.raises(ValueError, match="method must be one of"):
        AdaptiveConstraintConfig(method="neumann").validate()
    with pytest.raises(ValueError, match="takes no horizon"):
        AdaptiveConstraintConfig(method="implicit", horizon=3).validate()
    with pytest.raises(TypeError, match="outer must be an OuterObjective or a function"):
        AdaptiveConstraint(AdaptiveConstraintConfig(), outer=3)


# -- several seeds in one call ----------------------------------------------------------------------


def td3bc_objective(actor, critic):
    """TD3+BC's actor loss as a pure function of the actor params, critic params and batch."""

    def make(critic_params, obs, act):
        def objective(params, alpha):
            pi = functional_call(actor, params, (obs,))
            q = functional_call(critic, critic_params, (obs, pi))[0]
            lam = alpha / q.abs().mean().detach()
            bc = (pi - act).pow(2).mean(dim=1)
            return Terms(loss=-lam * q.mean() + bc.mean(), value=q.mean(), constraint=bc)

        return objective

    return make


def test_coefficient_step_vmapped_over_three_seeds_equals_three_separate_ones():
    agents, batches = zip(*(warmed_aspc(seed=s, updates=31, horizon=2) for s in (1, 2, 3)))
    make = td3bc_objective(agents[0].actor, agents[0].critic)
    con = agents[0].constraint
    inputs = [
        (
            {k: v.detach() for k, v in a.critic.named_parameters()}, b.observations, b.actions,
            {k: v.detach() for k, v in a.actor.named_parameters()}, a.actor_opt_state, a.constraint.state,
        )
        for a, b in zip(agents, batches)
    ]  # fmt: skip

    def one(critic_params, obs, act, params, opt_state, state):
        new, result = con.coefficient_step(make(critic_params, obs, act), params, agents[0].actor_opt, opt_state, state)
        return new, result.params, result.opt_state, result.logs

    separate = [one(*x) for x in inputs]

    # stack every tensor leaf on a new leading dim; ints (Adam counts) are shared and not vmapped
    leaves0, spec = tree_flatten(inputs[0])
    stacked = [torch.stack([tree_flatten(x)[0][i] for x in inputs]) if isinstance(l, torch.Tensor) else l
               for i, l in enumerate(leaves0)]  # fmt: skip
    in_dims = tree_unflatten([0 if isinstance(l, torch.Tensor) else None for l in leaves0], spec)
    out_leaves, out_spec = tree_flatten(separate[0])

    def tensors_only(*args):
        return [x for x in tree_flatten(one(*args))[0] if isinstance(x, torch.Tensor)]

    batched = torch.func.vmap(tensors_only, in_dims=tuple(in_dims))(*tree_unflatten(stacked, spec))
    worst = 0.0
    for i, ref in enumerate(separate):
        ref_tensors = [x for x in tree_flatten(ref)[0] if isinstance(x, torch.Tensor)]
        assert len(ref_tensors) == len(batched)
        for x, y in zip(batched, ref_tensors):
            worst = max(worst, float((x[i] - y).abs().max()))
    assert worst <= 1e-10, worst
    assert len({float(s[0].rho) for s in separate}) == 3  # three different coefficients came out
    del out_leaves, out_spec


# -- checkpoints (exact resume with a horizon: tests/test_aspc.py) -----------------------------------


def test_checkpoint_from_before_the_chain_optimizers_loads():
    """Optimizer states written as {count, mu, nu} (before optimizers were chains) and the Q EMA
    under its old key load into today's format and resume the same run."""
    gen = torch.Generator().manual_seed(2)
    batches = [random_batch(gen) for _ in range(40)]
    a = small("aspc", constraint=dict(every=2))
    for b in batches[:20]:
        a.update(b)
    state = a.state_dict()
    legacy = dict(state)
    legacy["actor_opt_state"] = {"count": state["actor_opt_state"][1]["count"], **{
        k: state["actor_opt_state"][1][k] for k in ("mu", "nu")}}  # fmt: skip
    con = dict(state["constraint"])
    coef = dict(con["coefficient"])
    coef["opt_state"] = {"count": coef["opt_state"][1]["count"], "mu": coef["opt_state"][1]["mu"],
                         "nu": coef["opt_state"][1]["nu"]}  # fmt: skip
    con["coefficient"], con["q_ema"] = coef, con.pop("memory")["q_ema"]
    legacy["constraint"] = con
    b_agent = small("aspc", constraint=dict(every=2), seed=9)
    buf = io.BytesIO()
    torch.save(legacy, buf)  # as a checkpoint file: nothing shared with the running agent
    buf.seek(0)
    b_agent.load_state_dict(torch.load(buf, weights_only=True))
    for b in batches[20:]:
        a.update(b)
        b_agent.update(b)
    for k, v in a.actor.state_dict().items():
        assert torch.equal(v, b_agent.actor.state_dict()[k]), k


# -- the alpha study's options: a fresh outer batch, centred rewards --------------------------------


def test_fresh_outer_batch_judges_the_lookahead_on_the_previous_batch():
    gen = torch.Generator().manual_seed(6)
    batches = [random_batch(gen, dtype=F64) for _ in range(4)]
    same = small("aspc", dtype=F64, constraint=dict(every=2), seed=2)
    fresh = small("aspc", dtype=F64, constraint=dict(every=2), seed=2, outer_batch="fresh")
    for b in batches[:3]:  # the next update (4) is actor step 2: alpha's first update
        same.update(b), fresh.update(b)
    for agent in (same, fresh):  # update 4 by its parts: the critic step, then the actor step below
        agent.num_updates += 1
        agent._critic_step(batches[3])
    con = fresh.constraint
    args = (fresh.actor_objective(batches[3]), fresh._actor_params(), fresh.actor_opt, fresh.actor_opt_state)
    by_hand = con.hypergradient(*args, outer_objective=fresh.actor_objective(batches[2]))
    own = con.hypergradient(*args)
    logs_s, logs_f = same._actor_step(batches[3]), fresh._actor_step(batches[3])
    assert float(logs_f["hypergrad"]) == float(by_hand.grads["rho"]) != float(own.grads["rho"])
    assert float(logs_s["hypergrad"]) == float(own.grads["rho"])
    for k, v in same.actor.state_dict().items():  # the real step is the inner batch's, in both
        assert torch.equal(v, fresh.actor.state_dict()[k])
    assert float(same.constraint.value()) != float(fresh.constraint.value())


def test_fresh_outer_batch_resumes_exactly_from_an_odd_step():
    """A checkpoint between a critic-only update and the next actor step must carry the batch."""
    gen = torch.Generator().manual_seed(7)
    batches = [random_batch(gen) for _ in range(40)]
    a = small("aspc", constraint=dict(every=2), outer_batch="fresh")
    for b in batches[:21]:
        a.update(b)
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b_agent = small("aspc", constraint=dict(every=2), outer_batch="fresh", seed=5)
    b_agent.load_state_dict(torch.load(buf, weights_only=True))
    for b in batches[21:]:
        a.update(b), b_agent.update(b)
    for k, v in a.actor.state_dict().items():
        assert torch.equal(v, b_agent.actor.state_dict()[k]), k
    assert torch.equal(a.constraint.coefficient.rho, b_agent.constraint.coefficient.rho)


def test_outer_batch_setting_is_checked():
    with pytest.raises(ValueError, match="outer_batch must be one of"):
        small("aspc", outer_batch="next")


def test_reward_centring_subtracts_the_datasets_mean_reward():
    from metaconstraint.data.normalization import RewardTransform

    from .test_data_sampler import indexed_dataset

    t = indexed_dataset()
    center = RewardTransform.from_mode("center", t)
    assert center.shift == pytest.approx(-float(t.rewards.mean()), rel=1e-12) and center.scale == 1.0
    assert abs(float(center(t.rewards).mean())) < 1e-6
    with pytest.raises(ValueError, match="needs the dataset"):
        RewardTransform.from_mode("center")
