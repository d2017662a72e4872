"""The baselines (IQL, CQL, ReBRAC, wPC, A2PR) and the adaptive variants built on the constraint module.

Every loss is recomputed here from the spec's equations (baselines.md), with the agents'
networks as plain functions; random draws are replayed from a clone of the agent's generator
in the order each module's docstring states.
"""

from __future__ import annotations

import copy
import functools
import io
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Normal
from torch.func import functional_call

import metaconstraint as mc
from metaconstraint.batch import Batch

from .pendulum_data import make_dataset

OBS, ACT, MAX = 3, 2, 1.5  # max_action != 1 catches missing action scaling
F64 = torch.float64
NEW = ("iql", "cql", "rebrac", "wpc", "a2pr", "iql-adaptive", "cql-adaptive", "rebrac-adaptive")
PAIRS = (("rebrac", "rebrac-adaptive"), ("cql", "cql-adaptive"), ("iql", "iql-adaptive"))


def tiny(name: str, obs_dim: int = OBS, act_dim: int = ACT, max_action: float = MAX, dtype=torch.float32, **kw):
    """An agent with 16-wide networks (every width field the algorithm's config has)."""
    fields = set(mc.algos.ALGORITHMS[name].Config.__dataclass_fields__)
    for f in ("actor_hidden", "value_hidden", "vae_hidden"):
        if f in fields:
            kw.setdefault(f, (16, 16))
    if "critic_width" in fields:
        kw.setdefault("critic_width", 16)
    kw.setdefault("planned_steps", 1000)
    return mc.algos.make(name, obs_dim, act_dim, max_action=max_action, dtype=dtype, **kw)


def random_batch(gen: torch.Generator, n: int = 24, dtype=F64) -> Batch:
    r = lambda *s: torch.randn(*s, generator=gen, dtype=dtype)  # noqa: E731
    act = (torch.rand(n, ACT, generator=gen, dtype=dtype) * 2 - 1) * 0.9 * MAX
    next_act = (torch.rand(n, ACT, generator=gen, dtype=dtype) * 2 - 1) * 0.9 * MAX
    term = (torch.rand(n, generator=gen) < 0.2).to(dtype)
    mask = (1 - term) * (torch.rand(n, generator=gen) < 0.8).to(dtype)
    return Batch(r(n, OBS), act, r(n), r(n, OBS), term, next_act, mask)


def clone_gen(rng: torch.Generator) -> torch.Generator:
    g = torch.Generator()
    g.set_state(rng.get_state())
    return g


def min_q(critic, s, a):
    return torch.minimum(critic.member(0, s, a), critic.member(1, s, a))


def close(x, y, rel=1e-10):
    x, y = torch.as_tensor(x).detach(), torch.as_tensor(y).detach()
    return float(x) == pytest.approx(float(y), rel=rel, abs=1e-12)


# -- runs on a tiny Pendulum dataset ---------------------------------------------------------------


class PendulumBatches:
    """Uniform batches from generated Pendulum data, with the dataset's true next actions."""

    def __init__(self, kind: str, episodes: int, batch_size: int, seed: int = 0):
        d = make_dataset(kind, episodes=episodes, seed=seed)
        n = len(d["actions"])
        cont = np.ones(n, dtype=bool)
        cont[199::200] = False  # Pendulum episodes are 200 steps, ended by the time limit
        nxt = np.zeros_like(d["actions"])
        nxt[:-1][cont[:-1]] = d["actions"][1:][cont[:-1]]
        mean, std = d["observations"].mean(0), d["observations"].std(0) + 1e-3
        t = lambda x: torch.as_tensor(np.asarray(x, dtype=np.float32))  # noqa: E731
        self.arrays = [
            t((d["observations"] - mean) / std), t(d["actions"]), t(d["rewards"]), t((d["next_observations"] - mean) / std),
            t(d["terminals"]), t(nxt), t(cont),
        ]  # fmt: skip
        self.batch_size, self.gen = batch_size, torch.Generator().manual_seed(seed)

    def sample(self) -> Batch:
        i = torch.randint(len(self.arrays[0]), (self.batch_size,), generator=self.gen)
        return Batch(*(x[i] for x in self.arrays))


@pytest.fixture(scope="module")
def expert_batches():
    return PendulumBatches("expert", episodes=2, batch_size=32)


def parameters(agent) -> dict[str, torch.Tensor]:
    out = {}
    for part in ("actor", "critic", "value", "vae"):
        if hasattr(agent, part):
            out.update({f"{part}.{k}": v.detach().clone() for k, v in getattr(agent, part).state_dict().items()})
    return out


@pytest.mark.parametrize("name", NEW)
def test_runs_500_steps_with_finite_losses(name, expert_batches):
    agent = tiny(name, obs_dim=3, act_dim=1, max_action=2.0, planned_steps=500)
    before = parameters(agent)
    seen: set[str] = set()
    for _ in range(500):
        logs = agent.update(expert_batches.sample())
        seen |= set(logs)
        for k, v in logs.items():
            assert v.dim() == 0 and not v.requires_grad, k
    assert all(torch.isfinite(v) for v in logs.values()), logs
    assert seen <= set(agent.metric_names), seen - set(agent.metric_names)
    assert agent.num_updates == 500
    after = parameters(agent)
    assert all(not torch.equal(before[k], after[k]) for k in before if k.startswith(("actor.", "critic.")))
    obs = expert_batches.sample().observations
    a = agent.act(obs)
    assert a.shape == (32, 1) and float(a.abs().max()) <= 2.0 and torch.equal(a, agent.act(obs))


def test_registry_has_every_cli_name():
    expected = {"td3bc", "aspc", "iql", "cql", "rebrac", "wpc", "a2pr", "iql-adaptive", "cql-adaptive", "rebrac-adaptive"}
    assert set(mc.algos.ALGORITHMS) == expected
    for name, cls in mc.algos.ALGORITHMS.items():
        assert cls.name == name


# -- hand computations on a fixed batch --------------------------------------------------------------


def td3_next_actions(agent, batch, g):
    """TD3 target smoothing with the spec's constants (noise 0.2, clip 0.5, times max_action)."""
    eps = (torch.randn(batch.actions.shape, generator=g, dtype=F64) * 0.2 * MAX).clamp(-0.5 * MAX, 0.5 * MAX)
    return (agent.actor_target(batch.next_observations) + eps).clamp(-MAX, MAX)


def test_rebrac_losses_match_hand_computation():
    agent = tiny("rebrac", dtype=F64, actor_bc_coef=0.7, critic_bc_coef=0.3)
    batch = random_batch(torch.Generator().manual_seed(0))
    s, a, r, s2, d = batch.observations, batch.actions, batch.rewards, batch.next_observations, batch.terminals
    g = clone_gen(agent.rng)
    with torch.no_grad():
        a2 = td3_next_actions(agent, batch, g)
        penalty = ((a2 - batch.next_actions) ** 2).sum(1) * batch.next_action_mask
        y = r + 0.99 * (1 - d) * (min_q(agent.critic_target, s2, a2) - 0.3 * penalty)
    critic = copy.deepcopy(agent.critic)
    loss = ((critic.q1(s, a) - y) ** 2).mean() + ((critic.member(1, s, a) - y) ** 2).mean()
    opt = torch.optim.Adam(critic.parameters(), lr=1e-3)  # ReBRAC's lr
    loss.backward()
    opt.step()
    logs = agent._critic_step(batch)
    assert close(logs["critic_loss"], loss) and close(logs["critic_penalty"], penalty.mean())
    for p, q in zip(critic.parameters(), agent.critic.parameters()):
        assert torch.allclose(p, q, rtol=0, atol=1e-12)

    with torch.no_grad():
        pi = agent.actor(s)
        q = min_q(agent.critic, s, pi)
        bc = ((pi - a) ** 2).sum(1)
        expected = (0.7 * bc).mean() - q.mean() / q.abs().mean()
    logs = agent._actor_step(batch)
    assert close(logs["actor_loss"], expected) and close(logs["bc_loss"], bc.mean()) and close(logs["q_mean"], q.mean())
    assert float(logs["beta1"]) == pytest.approx(0.7)


def test_wpc_losses_match_hand_computation():
    agent = tiny("wpc", dtype=F64)
    batch = random_batch(torch.Generator().manual_seed(1))
    s, a, r, s2, d = batch.observations, batch.actions, batch.rewards, batch.next_observations, batch.terminals
    g = clone_gen(agent.rng)
    with torch.no_grad():
        y = r + 0.99 * (1 - d) * min_q(agent.critic_target, s2, td3_next_actions(agent, batch, g))
        critic_loss = ((agent.critic.q1(s, a) - y) ** 2).mean() + ((agent.critic.member(1, s, a) - y) ** 2).mean()
        value_loss = ((agent.value(s) - y) ** 2).mean()
    logs = agent._critic_step(batch)
    assert close(logs["critic_loss"], critic_loss) and close(logs["value_loss"], value_loss)

    with torch.no_grad():
        w = (agent.critic.q1(s, a) > agent.value(s)).to(F64)
        pi = agent.actor(s)
        q = agent.critic.q1(s, pi)
        expected = -2.5 * q.mean() / q.abs().mean() + (w * ((pi - a) ** 2).mean(1)).sum() / len(s)
    assert 0 < float(w.sum()) < len(s)  # the weights select some samples, not all
    logs = agent._actor_step(batch)
    assert close(logs["actor_loss"], expected) and close(logs["bc_weight"], w.mean())


def test_a2pr_losses_match_hand_computation():
    agent = tiny("a2pr", dtype=F64)
    batch = random_batch(torch.Generator().manual_seed(2))
    s, a, r, s2, d = batch.observations, batch.actions, batch.rewards, batch.next_observations, batch.terminals
    g = clone_gen(agent.rng)
    with torch.no_grad():
        a2 = td3_next_actions(agent, batch, g)
        y = r + 0.99 * (1 - d) * min_q(agent.critic_target, s2, a2)
    critic = copy.deepcopy(agent.critic)  # replay the critic's Adam step to get the online critic after it
    critic_loss = ((critic.q1(s, a) - y) ** 2).mean() + ((critic.member(1, s, a) - y) ** 2).mean()
    opt = torch.optim.Adam(critic.parameters(), lr=3e-4)
    critic_loss.backward()
    opt.step()
    with torch.no_grad():
        y_online = r + 0.99 * (1 - d) * min_q(critic, s2, a2)
        v_before = agent.value(s)
        value_loss = ((v_before - torch.minimum(y, y_online)) ** 2).mean()
        w = (critic.q1(s, a) > v_before).to(F64)
        mu, std = agent.vae.encode(s, a)
        recon = agent.vae.decode(s, mu + std * torch.randn((len(s), 2 * ACT), generator=g, dtype=F64))
        kl = -0.5 * (1 + torch.log(std**2) - mu**2 - std**2).mean()
        vae_loss = (w[:, None] * (recon - a) ** 2).mean() + 0.5 * kl
    assert bool((y_online != y).any())
    logs = agent._critic_step(batch)
    assert close(logs["critic_loss"], critic_loss) and close(logs["value_loss"], value_loss, rel=1e-8)
    assert close(logs["vae_loss"], vae_loss, rel=1e-8)

    with torch.no_grad():
        pi = agent.actor(s)
        v = agent.value(s)
        mu, std = agent.vae.encode(s, pi)
        a_hat = agent.vae.decode(s, mu + std * torch.randn((len(s), 2 * ACT), generator=g, dtype=F64))
        q_hat, q_data = agent.critic.q1(s, a_hat), agent.critic.q1(s, a)
        pick = (q_hat - v >= q_data - v)[:, None]
        target = torch.where(pick, a_hat, a)
        weight = 0.5 * ((q_hat >= v).to(F64) + (q_data > v).to(F64))
        q = agent.critic.q1(s, pi)
        expected = -2.5 * q.mean() / q.abs().mean() + (weight[:, None] * (pi - target) ** 2).mean()
    assert 0 < int(pick.sum()) < len(s)  # both targets occur
    logs = agent._actor_step(batch)
    assert close(logs["actor_loss"], expected) and close(logs["vae_target_frac"], pick.to(F64).mean())


def sharpen_iql_critic(agent, batch, scale: float = 60.0) -> None:
    """Spread the advantages and centre them at the cap, so that exp(beta A) is capped for about half the batch."""
    with torch.no_grad():
        agent.critic_target.net[-1].weight.mul_(scale)  # both critics' last layers
        adv = min_q(agent.critic_target, batch.observations, batch.actions) - agent.value(batch.observations)
        agent.value.net[-1].bias.add_(adv.median() - math.log(100.0) / agent.config.beta)


@pytest.mark.parametrize("policy", ["gaussian", "deterministic"])
def test_iql_losses_match_hand_computation(policy):
    agent = tiny("iql", dtype=F64, policy=policy)
    batch = random_batch(torch.Generator().manual_seed(3))
    sharpen_iql_critic(agent, batch)
    s, a, r, s2, d = batch.observations, batch.actions, batch.rewards, batch.next_observations, batch.terminals
    with torch.no_grad():
        u = min_q(agent.critic_target, s, a) - agent.value(s)
        value_loss = (torch.abs(0.7 - (u < 0).to(F64)) * u**2).mean()
    assert close(agent._value_step(batch)["value_loss"], value_loss)

    with torch.no_grad():
        adv = min_q(agent.critic_target, s, a) - agent.value(s)  # V after its step
        weight = torch.clamp(torch.exp(3.0 * adv), max=100.0)
        if policy == "gaussian":
            mean, log_std = agent.actor(s)
            nll = -Normal(mean, log_std.exp()).log_prob(a).sum(1)
        else:
            mean = agent.actor(s)
            nll = ((mean - a) ** 2).sum(1)
        expected = (weight * nll).mean()
    assert bool((weight == 100.0).any()) and bool((weight < 100.0).any())
    assert close(agent._actor_step(batch)["actor_loss"], expected)

    with torch.no_grad():
        y = r + 0.99 * (1 - d) * agent.value(s2)
        critic_loss = 0.5 * (((y - agent.critic.q1(s, a)) ** 2).mean() + ((y - agent.critic.member(1, s, a)) ** 2).mean())
    assert close(agent._critic_step(batch)["critic_loss"], critic_loss)


def test_iql_update_is_value_actor_critic_then_targets():
    gen = torch.Generator().manual_seed(4)
    batches = [random_batch(gen) for _ in range(5)]
    a, b = tiny("iql", dtype=F64), tiny("iql", dtype=F64)
    for batch in batches:
        a.update(batch)
        b._value_step(batch)
        b._actor_step(batch)
        b._critic_step(batch)
        for p, t in zip(b.critic.parameters(), b.critic_target.parameters()):
            t.data.mul_(1 - 0.005).add_(0.005 * p.data)
    pa, pb = parameters(a), parameters(b)
    for k in pa:
        assert torch.allclose(pa[k], pb[k], rtol=0, atol=1e-14), k
    for p, q in zip(a.critic_target.parameters(), b.critic_target.parameters()):
        assert torch.allclose(p, q, rtol=0, atol=1e-14)


def test_iql_actor_lr_is_cosine_decayed():
    agent = tiny("iql", planned_steps=1000)
    lr = agent.actor_lr
    assert lr(0) == pytest.approx(3e-4) and lr(500) == pytest.approx(1.5e-4) and lr(1000) == pytest.approx(0.0, abs=1e-15)
    assert lr(250) == pytest.approx(3e-4 * (1 + math.cos(math.pi / 4)) / 2)


def tanh_gaussian_by_hand(agent, obs, eps):
    """Reparameterised sample and log-density through tanh and the action scale, term by term."""
    mu, log_std = agent.actor(obs)
    if eps.dim() == 3:
        mu, log_std = mu[:, None], log_std[:, None]
    u = mu + log_std.exp() * eps
    log_p = Normal(mu, log_std.exp()).log_prob(u).sum(-1) - torch.log(MAX * (1 - torch.tanh(u) ** 2)).sum(-1)
    return MAX * torch.tanh(u), log_p


def test_cql_losses_match_hand_computation():
    agent = tiny("cql", dtype=F64)
    batch = random_batch(torch.Generator().manual_seed(5))
    s, a, r, s2, d = batch.observations, batch.actions, batch.rewards, batch.next_observations, batch.terminals
    n, N = len(s), 10
    g = clone_gen(agent.rng)
    with torch.no_grad():
        a_pi, log_pi = tanh_gaussian_by_hand(agent, s, torch.randn((n, ACT), generator=g, dtype=F64))
        actor_loss = (1.0 * log_pi - min_q(agent.critic, s, a_pi)).mean()
    logs = agent._actor_step(batch)
    assert close(logs["actor_loss"], actor_loss) and close(logs["log_pi"], log_pi.mean())
    # Adam's first step moves log alpha_ent by lr against the sign of d/dlog_alpha = -(mean log pi - act_dim)
    expected_log_alpha = -1e-4 * math.copysign(1.0, -(float(log_pi.mean()) - ACT))
    assert float(agent.log_entropy_alpha.detach()) == pytest.approx(expected_log_alpha, rel=1e-6)

    with torch.no_grad():
        a2, _ = tanh_gaussian_by_hand(agent, s2, torch.randn((n, ACT), generator=g, dtype=F64))
        y = r + 0.99 * (1 - d) * min_q(agent.critic_target, s2, a2)
        uniform = (torch.rand((n, N, ACT), generator=g, dtype=F64) * 2 - 1) * MAX
        cur, cur_lp = tanh_gaussian_by_hand(agent, s, torch.randn((n, N, ACT), generator=g, dtype=F64))
        nxt, nxt_lp = tanh_gaussian_by_hand(agent, s2, torch.randn((n, N, ACT), generator=g, dtype=F64))
        td, gaps, q_pi = 0.0, [], []
        for q in (functools.partial(agent.critic.member, j) for j in (0, 1)):
            q_data = q(s, a)
            td = td + ((q_data - y) ** 2).mean()
            x_rand = torch.stack([q(s, uniform[:, k]) for k in range(N)], 1) - math.log((1 / (2 * MAX)) ** ACT)
            x_cur = torch.stack([q(s, cur[:, k]) for k in range(N)], 1) - cur_lp
            x_nxt = torch.stack([q(s, nxt[:, k]) for k in range(N)], 1) - nxt_lp
            gaps.append(torch.logsumexp(torch.cat([x_rand, x_cur, x_nxt], 1), 1) - q_data)
            q_pi.append((x_cur + cur_lp).mean())
        critic_loss = td + 5.0 * (gaps[0].mean() + gaps[1].mean())
    logs = agent._critic_step(batch)
    assert close(logs["td_loss"], td) and close(logs["critic_loss"], critic_loss)
    assert close(logs["cql_gap"], (gaps[0].mean() + gaps[1].mean()) / 2) and close(logs["q_mean"], sum(q_pi) / 2)
    assert float(gaps[0].min()) > 0  # the gap is positive here, as the docstring says (B > 0)


def test_cql_lagrange_raises_alpha_prime_when_the_gap_exceeds_its_target():
    agent = tiny("cql", dtype=F64, lagrange=True, target_action_gap=1.0)
    batch = random_batch(torch.Generator().manual_seed(6))
    logs = agent.update(batch)
    gap = float(logs["cql_gap"])
    assert 5.0 * gap > 1.0
    assert float(agent.log_alpha_prime.detach()) == pytest.approx(3e-4, rel=1e-5)  # Adam's first step, upwards
    low = tiny("cql", dtype=F64, lagrange=True, target_action_gap=100.0)
    low.update(batch)
    assert float(low.log_alpha_prime.detach()) == pytest.approx(-3e-4, rel=1e-5)


def test_policies_log_probabilities_match_torch_distributions():
    torch.manual_seed(0)
    obs = torch.randn(7, OBS, dtype=F64)
    tg = mc.nets.TanhGaussianActor(OBS, ACT, MAX, (16,)).to(F64)
    eps = torch.randn(7, 4, ACT, dtype=F64)
    acts, log_p = tg.sample(obs, eps)
    mu, log_std = tg(obs)
    dist = torch.distributions.TransformedDistribution(
        Normal(mu[:, None], log_std.exp()[:, None]),
        [torch.distributions.TanhTransform(), torch.distributions.AffineTransform(0.0, MAX)],
    )
    assert torch.allclose(log_p, dist.log_prob(acts).sum(-1), atol=1e-8)
    ga = mc.nets.GaussianActor(OBS, ACT, MAX, (16,)).to(F64)
    a = torch.rand(7, ACT, dtype=F64)
    mean, log_std = ga(obs)
    assert torch.allclose(ga.log_prob(obs, a), Normal(mean, log_std.exp()).log_prob(a).sum(-1))


# -- the adaptive variants: hypergradients ---------------------------------------------------------


def outer_terms(agent, before_value, after_value, bc, bc2, frozen):
    """L2 and L3 of the spec from the value and per-sample constraint before/after the step."""
    c = agent.config.constraint
    q_ema = agent.constraint.memory["q_ema"]
    dq = (1 - c.ema_decay) * after_value + c.ema_decay * q_ema - q_ema if c.delta_q == "ema" else after_value - before_value
    l2 = dq**2
    l3 = (l2 if frozen is None else frozen["l2"]) * bc.max() * (bc - bc2).abs().max()
    return l2, l3


def stepped(opt, state, params, loss):
    grads = dict(zip(params, torch.autograd.grad(loss, list(params.values()))))
    updates, _ = opt.update(grads, state, params)
    return {k: (params[k] + updates[k]).detach() for k in params}


def reference_rebrac(agent, batch, rho, frozen=None):
    s, a = batch.observations, batch.actions
    params = {k: v.detach().requires_grad_(True) for k, v in agent.actor.named_parameters()}
    fwd = lambda p: functional_call(agent.actor, p, (s,))  # noqa: E731
    beta1 = F.softplus(rho)
    pi = fwd(params)
    q = min_q(agent.critic, s, pi)
    loss = beta1 * ((pi - a) ** 2).sum(1).mean() - q.mean() / q.abs().mean().detach()
    new = stepped(agent.actor_opt, agent.actor_opt_state, params, loss)
    with torch.no_grad():
        pi2 = fwd(new)
        q2 = min_q(agent.critic, s, pi2)
        bc, bc2 = ((pi - a) ** 2).sum(1), ((pi2 - a) ** 2).sum(1)
        qabs = q2.abs().mean() if frozen is None else frozen["qabs"]
        beta0 = beta1 if frozen is None else frozen["coef"]
        l1 = beta0 * bc2.mean() - q2.mean() / qabs
        l2, l3 = outer_terms(agent, q.mean(), q2.mean(), bc, bc2, frozen)
    return float(l1 + l2 + l3), {"qabs": qabs, "l2": l2, "coef": beta1.detach()}


def reference_iql(agent, batch, rho, frozen=None):
    s, a = batch.observations, batch.actions
    params = {k: v.detach().requires_grad_(True) for k, v in agent.actor.named_parameters()}
    fwd = lambda p: functional_call(agent.actor, p, (s,))  # noqa: E731
    with torch.no_grad():
        adv = min_q(agent.critic_target, s, a) - agent.value(s)
    beta = F.softplus(rho)

    def awr(mean, log_std, b):
        return (torch.clamp(torch.exp(b * adv), max=100.0) * -Normal(mean, log_std.exp()).log_prob(a).sum(1)).mean()

    mean, log_std = fwd(params)
    new = stepped(agent.actor_opt, agent.actor_opt_state, params, awr(mean, log_std, beta))
    with torch.no_grad():
        mean2, log_std2 = fwd(new)
        beta0 = beta if frozen is None else frozen["coef"]
        l1 = awr(mean2, log_std2, beta0)
        bc, bc2 = ((mean - a) ** 2).mean(1), ((mean2 - a) ** 2).mean(1)
        v1, v2 = min_q(agent.critic_target, s, mean).mean(), min_q(agent.critic_target, s, mean2).mean()
        l2, l3 = outer_terms(agent, v1, v2, bc, bc2, frozen)
    return float(l1 + l2 + l3), {"l2": l2, "coef": beta.detach()}


def reference_cql(agent, batch, samples, rho, frozen=None):
    s, a = batch.observations, batch.actions
    params = {k: v.detach().requires_grad_(True) for k, v in agent.critic.named_parameters()}
    N = agent.config.num_samples
    s_rep = s[:, None].expand(-1, 3 * N, -1)

    def terms(p, coef):
        qs = [agent.critic.member(0, x, y, p) for x, y in ((s, a), (s_rep, samples.actions))]
        qs2 = [agent.critic.member(1, x, y, p) for x, y in ((s, a), (s_rep, samples.actions))]
        td, gaps, value = 0.0, [], 0.0
        for q_data, q_all in (qs, qs2):
            td = td + ((q_data - samples.y) ** 2).mean()
            gaps.append(torch.logsumexp(q_all - samples.log_density, 1) - q_data)
            value = value + q_all[:, N : 2 * N].mean() / 2
        return td + coef * (gaps[0].mean() + gaps[1].mean()), value, (gaps[0] + gaps[1]) / 2

    alpha = F.softplus(rho)
    loss, v1, bc = terms(params, alpha)
    new = stepped(agent.critic_opt, agent.critic_opt_state, params, loss)
    with torch.no_grad():
        alpha0 = alpha if frozen is None else frozen["coef"]
        l1, v2, bc2 = terms(new, alpha0)
        l2, l3 = outer_terms(agent, v1.detach(), v2, bc.detach(), bc2, frozen)
    return float(l1 + l2 + l3), {"l2": l2, "coef": alpha.detach()}


def warmed_up(name, delta_q, seed=0):
    gen = torch.Generator().manual_seed(seed)
    agent = tiny(name, dtype=F64, constraint=dict(delta_q=delta_q, every=3), seed=1)
    for _ in range(30):  # a few coefficient updates: Adam moments and the Q EMA are non-trivial
        agent.update(random_batch(gen))
    batch = random_batch(gen)
    if name == "iql-adaptive":
        sharpen_iql_critic(agent, batch, 10.0)
    return agent, batch


@pytest.mark.parametrize("delta_q", ["ema", "step"])
@pytest.mark.parametrize("name", ["rebrac-adaptive", "iql-adaptive", "cql-adaptive"])
def test_coefficient_hypergradient_matches_finite_differences(name, delta_q):
    agent, batch = warmed_up(name, delta_q)
    con = agent.constraint
    assert float(con.memory["q_ema"]) != 0.0 or delta_q == "step"
    if name == "cql-adaptive":
        samples = agent.draw_samples(batch)
        objective, params = agent.critic_objective(batch, samples), dict(agent.critic.named_parameters())
        opt, state = agent.critic_opt, agent.critic_opt_state
        ref = lambda rho, fr=None: reference_cql(agent, batch, samples, rho, fr)  # noqa: E731
    else:
        objective, params = agent.actor_objective(batch), dict(agent.actor.named_parameters())
        opt, state = agent.actor_opt, agent.actor_opt_state
        fn = reference_rebrac if name == "rebrac-adaptive" else reference_iql
        ref = lambda rho, fr=None: fn(agent, batch, rho, fr)  # noqa: E731
    hg = con.hypergradient(objective, params, opt, state)
    outer, grad = hg.outer, hg.grads["rho"]
    rho0 = con.coefficient.rho.detach().clone()
    value, frozen = ref(rho0)
    assert float(outer) == pytest.approx(value, rel=1e-10)  # the library's outer loss is the spec's
    eps = 1e-4  # outer losses are O(10): a smaller step drowns the O(1e-5) slope in rounding noise
    fd = (ref(rho0 + eps, frozen)[0] - ref(rho0 - eps, frozen)[0]) / (2 * eps)
    assert float(grad) != 0.0
    assert abs(float(grad) - fd) <= 1e-5 * abs(fd), (float(grad), fd)


@pytest.mark.parametrize("fixed, adaptive", PAIRS)
def test_idle_adaptive_variant_equals_its_baseline(fixed, adaptive):
    coef = {"rebrac": dict(actor_bc_coef=0.5), "cql": {}, "iql": {}}[fixed]  # 0.5 = softplus(rho) exactly
    gen = torch.Generator().manual_seed(7)
    batches = [random_batch(gen, dtype=torch.float32) for _ in range(40)]
    base = tiny(fixed, **coef)
    idle, active = tiny(adaptive, constraint=dict(every=10**9), **coef), tiny(adaptive, constraint=dict(every=2), **coef)
    for b in batches:
        base.update(b)
        idle.update(b)
        active.update(b)
    pb, pi, pa = parameters(base), parameters(idle), parameters(active)
    for k in pb:
        assert torch.equal(pb[k], pi[k]), k
    assert any(not torch.equal(pb[k], pa[k]) for k in pb)
    assert float(active.constraint.value()) != float(base.constraint.value())


# -- the adaptive variants: direction on near-expert vs random data --------------------------------


def learned_coefficient(name: str, kind: str, steps: int, seed: int = 0, **kw) -> float:
    data = PendulumBatches(kind, episodes=4, batch_size=32, seed=seed)
    agent = tiny(name, 3, 1, 2.0, seed=seed, planned_steps=steps, **kw)
    for _ in range(steps):
        agent.update(data.sample())
    return float(agent.constraint.value())


def test_cql_alpha_rises_on_expert_data_and_stays_lower_on_random_data():
    """alpha_cql = 5 at the start; narrow near-expert data asks for more conservatism than random data.

    Observed at these settings (300 steps, 16-wide nets, batch 32, coefficient lr 5e-2), seeds
    0-3: expert 5.350-5.353 (the hypergradient's sign never changes: alpha_cql moves as fast as
    Adam allows), random 4.70, 5.12, 5.02, 4.90. ReBRAC's beta1 and IQL's beta show no stable
    ordering at test scale (see the README), so no direction is asserted for them.
    """
    expert = learned_coefficient("cql-adaptive", "expert", 300, constraint=dict(lr=5e-2))
    random = learned_coefficient("cql-adaptive", "random", 300, constraint=dict(lr=5e-2))
    assert expert > 5.2 and random < expert - 0.1, (expert, random)


# -- checkpoints and errors ----------------------------------------------------------------------


@pytest.mark.parametrize("name", NEW + ("cql-lagrange",))
def test_state_dict_resumes_exactly(name):
    extra = {"constraint": {"every": 2}} if name.endswith("adaptive") else {}
    if name == "cql-lagrange":
        name, extra = "cql", {"lagrange": True}
    gen = torch.Generator().manual_seed(8)
    batches = [random_batch(gen, dtype=torch.float32) for _ in range(40)]
    a = tiny(name, **extra)
    for b in batches[:20]:
        a.update(b)
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    for b in batches[20:]:
        a.update(b)
    buf.seek(0)
    b_agent = tiny(name, seed=99, **extra)  # another init: everything must come from the checkpoint
    b_agent.load_state_dict(torch.load(buf, weights_only=True))
    for b in batches[20:]:
        b_agent.update(b)
    pa, pb = parameters(a), parameters(b_agent)
    for k in pa:
        assert torch.equal(pa[k], pb[k]), k
    assert torch.equal(a.constraint.value(), b_agent.constraint.value())
    assert torch.equal(a.rng.get_state(), b_agent.rng.get_state())


def test_config_errors_are_readable():
    with pytest.raises(ValueError, match="Lagrangian"):
        tiny("cql-adaptive", lagrange=True)
    with pytest.raises(ValueError, match="policy must be one of"):
        tiny("iql", policy="beta")
    with pytest.raises(ValueError, match="start > 0"):
        tiny("rebrac-adaptive", actor_bc_coef=0.0)
    with pytest.raises(ValueError, match="delta_q"):
        tiny("iql-adaptive", constraint=dict(delta_q="mean"))
    with pytest.raises(KeyError, match="no setting"):
        tiny("wpc", beta1=1.0)
    with pytest.raises(ValueError, match="checkpoint is for algorithm 'cql', not 'iql'"):
        tiny("iql").load_state_dict(tiny("cql").state_dict())


def test_presets_are_valid_settings():
    for name in ("iql", "cql", "rebrac", "a2pr"):
        cls = mc.algos.ALGORITHMS[name]
        for preset, settings in cls.presets.items():
            tiny(name, **settings)  # every preset key is a setting of the algorithm
    assert mc.algos.ALGORITHMS["iql"].presets["antmaze"] == {"expectile": 0.9, "beta": 10.0}
    assert mc.algos.ALGORITHMS["rebrac"].presets["halfcheetah-random"] == {"actor_bc_coef": 0.001, "critic_bc_coef": 0.1}
