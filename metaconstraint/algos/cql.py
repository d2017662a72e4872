"""CQL (Kumar et al., 2020) on a SAC backbone, and CQL with a learned conservatism weight alpha_cql.

Per update, in this order:

    entropy: a ~ pi(.|s) (tanh-Gaussian, reparameterised);
             L_ent = -mean[log_alpha_ent * (log pi(a|s) + H_target)],  H_target = -act_dim
    actor:   L_pi = mean[alpha_ent * log pi(a|s) - min_j Q_j(s, a)]   (alpha_ent before its step)
    critic:  y = r + gamma (1 - d) min_j Q'_j(s', a'),  a' ~ pi(.|s')   [- alpha_ent log pi(a'|s') with backup_entropy]
             L_TD = sum_j MSE(Q_j(s, a), y)
             conservative gap per sample and critic j (CQL(H) with importance sampling, N = 10):
               X_j = [Q_j(s, u_k) - log U,  Q_j(s, a_k) - log pi(a_k|s),  Q_j(s, a'_k) - log pi(a'_k|s')]_k=1..N
               u_k ~ U(-max_action, max_action)^d (log U = -d log(2 max_action)), a_k ~ pi(.|s), a'_k ~ pi(.|s')
               gap_j(s, a) = T * logsumexp(X_j / T) - Q_j(s, a),  T = 1
             L_Q = L_TD + alpha_cql * sum_j mean gap_j
             Lagrangian variant: L_Q = L_TD + sum_j alpha' (alpha_cql * mean gap_j - target_gap),
             with alpha' = clip(exp(log alpha'), 0, 1e6) trained to maximise it
    targets: Q'_j <- Polyak(Q_j, tau = 0.005)

Networks: actor and critics 3x256 (critics without LayerNorm); Adam lr 1e-4 (actor and
entropy temperature), 3e-4 (critics, alpha'). alpha_cql = 5 (the authors' MuJoCo value; 10
is also used); AntMaze: the Lagrangian variant with threshold 5 (``CQL_PRESETS``). Acting is
deterministic: max_action * tanh(mu(s)). The original's optional BC warm-up of the policy
is not included.

Random draws from ``self.rng`` per update, in order: the actor sample eps (B, d); the target
sample eps' (B, d); uniform actions (B, N, d); policy samples at s (B, N, d) and at s' (B, N, d).

``cql-adaptive`` (:class:`AdaptiveCQL`) learns alpha_cql with the bilevel module
(:class:`metaconstraint.constraint.AdaptiveConstraint`, unchanged). The coefficient acts on
the critic, so the inner step is the critic step:

* coefficient: alpha_cql = softplus(rho), started at ``cql_alpha`` (5); shape ``L_TD + coef * L_CQL``;
* inner step: the critics' Adam step on L_Q(phi; alpha_cql), differentiated
  (``create_graph=True``); the sampled actions, their log-probabilities and the TD target y
  are constants of the step;
* outer loss: L1 = L_Q(phi~; alpha_cql detached) + L2 + L3, with
  ``Terms.value`` = the critics' mean value of the policy's sampled actions at s
  (mean_{j,k} Q_j(s, a_k)): dQ is how much one critic step moves the value of the policy;
  ``Terms.constraint`` = the per-sample gap (gap_1 + gap_2) / 2: B is the largest gap before
  the step, dB the largest change of the gap the step makes. The gap is a
  logsumexp minus Q(s, a) and is positive in practice (B > 0); it is not a distance, so a
  negative B (never seen in our runs) would flip L3's sign.
The Lagrangian variant is not combined with a learned alpha_cql (both would set the same weight).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, Mapping, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import optim
from ..batch import Batch
from ..constraint import FixedCoefficient, FixedConstraint, Terms, adaptive_constraint
from ..nets import Critic, CriticEnsemble, TanhGaussianActor
from ..data.reference import ANTMAZE_DATASETS
from .common import BILEVEL_METRICS, LearnedCoefficient, constraint_step
from .base import AgentBase, init_agent, named_constraint_logs, record_constraint_step, soft_update

# the CQL authors' per-domain settings, by domain and by D4RL dataset (the MuJoCo ones are the defaults)
CQL_PRESETS: dict[str, dict[str, Any]] = {
    "mujoco": dict(cql_alpha=5.0, lagrange=False),
    "antmaze": dict(cql_alpha=5.0, lagrange=True, target_action_gap=5.0),
    **{name: dict(cql_alpha=5.0, lagrange=True, target_action_gap=5.0) for name in ANTMAZE_DATASETS},
}


@dataclass
class CQLConfig:
    """CQL hyper-parameters (defaults: the authors' MuJoCo ones)."""

    cql_alpha: float = 5.0  # conservatism weight (the starting value in cql-adaptive)
    num_samples: int = 10  # N actions per source (uniform, pi(s), pi(s')) in the logsumexp
    temperature: float = 1.0  # T of the logsumexp
    lagrange: bool = False  # tune alpha' so that alpha_cql * gap stays near target_action_gap
    target_action_gap: float = 5.0
    discount: float = 0.99
    tau: float = 0.005
    actor_lr: float = 1e-4
    critic_lr: float = 3e-4
    entropy_lr: float = 1e-4  # lr of log alpha_ent (the policy lr, as in the original)
    auto_entropy: bool = True
    init_entropy_alpha: float = 1.0
    backup_entropy: bool = False
    actor_hidden: tuple[int, ...] = (256, 256, 256)
    critic_width: int = 256
    critic_depth: int = 3
    seed: int = 0
    planned_steps: int = 1_000_000

    def validate(self) -> None:
        if self.cql_alpha < 0:
            raise ValueError(f"cql_alpha must be >= 0, got {self.cql_alpha}")
        if self.num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {self.num_samples}")
        if self.temperature <= 0 or self.init_entropy_alpha <= 0:
            raise ValueError(
                f"temperature and init_entropy_alpha must be > 0, got {self.temperature}, {self.init_entropy_alpha}"
            )
        if not 0.0 < self.tau <= 1.0:
            raise ValueError(f"tau must lie in (0, 1], got {self.tau}")
        if not 0.0 <= self.discount < 1.0:
            raise ValueError(f"discount must lie in [0, 1), got {self.discount}")
        if self.planned_steps < 1:
            raise ValueError(f"planned_steps must be >= 1, got {self.planned_steps}")
        if self.critic_width < 1 or self.critic_depth < 1:
            raise ValueError(f"critic_width and critic_depth must be >= 1, got {self.critic_width}, {self.critic_depth}")
        self.actor_hidden = tuple(int(h) for h in self.actor_hidden)


class CQLSamples(NamedTuple):
    """What the conservative term needs, drawn once per critic step (constants of the step)."""

    actions: Tensor  # (B, 3N, d): N uniform, N from pi(.|s), N from pi(.|s')
    log_density: Tensor  # (B, 3N): log U, log pi(a_k|s), log pi(a'_k|s')
    y: Tensor  # (B,) TD target


class CQL(AgentBase):
    """CQL(H) with a fixed alpha_cql (optionally the Lagrangian variant)."""

    name = "cql"
    checkpointed = ("actor", "critic", "critic_target", "actor_opt", "log_entropy_alpha", "entropy_opt",
                    "log_alpha_prime", "alpha_prime_opt", "constraint")  # fmt: skip
    functional_opt_states = {"critic_opt_state": ("critic_opt", "critic")}
    Config = CQLConfig
    coefficient_name = "cql_alpha"
    metric_names: tuple[str, ...] = (
        "critic_loss", "td_loss", "cql_gap", "q_mean", "cql_alpha",
        "actor_loss", "log_pi", "entropy_alpha", "alpha_prime",
    )  # fmt: skip
    presets = CQL_PRESETS

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        max_action: float = 1.0,
        config: CQLConfig | None = None,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ):
        c = init_agent(self, obs_dim, act_dim, max_action, config, device, dtype)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(c.seed)
            self.actor = TanhGaussianActor(obs_dim, act_dim, max_action, c.actor_hidden).to(self.device, dtype)
            hidden = (c.critic_width,) * c.critic_depth
            self.critic = CriticEnsemble([Critic(obs_dim, act_dim, hidden) for _ in range(2)]).to(self.device, dtype)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=c.actor_lr)
        self.critic_opt = optim.adam(lr=c.critic_lr)  # functional: cql-adaptive differentiates through it
        self.critic_opt_state = self.critic_opt.init(dict(self.critic.named_parameters()))
        kw = dict(device=self.device, dtype=dtype)
        self.log_entropy_alpha = torch.tensor(math.log(c.init_entropy_alpha), requires_grad=True, **kw)
        self.entropy_opt = torch.optim.Adam([self.log_entropy_alpha], lr=c.entropy_lr)
        self.log_alpha_prime = torch.zeros((), requires_grad=True, **kw)
        self.alpha_prime_opt = torch.optim.Adam([self.log_alpha_prime], lr=c.critic_lr)
        self.target_entropy = -float(act_dim)
        self.constraint = self._make_constraint()
        self.rng = torch.Generator(device=self.device)
        self.rng.manual_seed(c.seed)
        self.num_updates = 0

    def _make_constraint(self) -> Any:
        return FixedConstraint(FixedCoefficient(self.config.cql_alpha, device=self.device, dtype=self.dtype))

    def _normal(self, *shape: int) -> Tensor:
        return torch.randn(shape, generator=self.rng, device=self.device, dtype=self.dtype)

    # -- the update --------------------------------------------------------------------------
    def update(self, batch: Batch) -> dict[str, Tensor]:
        """Entropy temperature, actor, critics (+ alpha'), target critics: one step each."""
        self.num_updates += 1
        logs = self._actor_step(batch)
        logs.update(self._critic_step(batch))
        soft_update(self.critic_target, self.critic, self.config.tau)
        self.finite_guard.commit(batch)
        return logs

    def entropy_alpha(self) -> Tensor:
        return self.log_entropy_alpha.detach().exp()

    def alpha_prime(self) -> Tensor:
        return self.log_alpha_prime.detach().exp().clamp(0.0, 1e6)

    def _actor_step(self, batch: Batch) -> dict[str, Tensor]:
        obs = batch.observations
        actions, log_pi = self.actor.sample(obs, self._normal(obs.shape[0], self.act_dim))
        alpha_ent = self.entropy_alpha()
        if self.config.auto_entropy:
            ent_loss = -(self.log_entropy_alpha * (log_pi.detach() + self.target_entropy)).mean()
            self.entropy_opt.zero_grad(set_to_none=True)
            ent_loss.backward()
            self.entropy_opt.step()
        frozen = {k: v.detach() for k, v in self.critic.named_parameters()}
        q = self.critic(obs, actions, frozen).amin(dim=0)
        loss = (alpha_ent * log_pi - q).mean()
        self.finite_guard.record("actor loss", loss)
        self.actor_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.actor_opt.step()
        return {"actor_loss": loss.detach(), "log_pi": log_pi.detach().mean(), "entropy_alpha": alpha_ent}

    @torch.no_grad()
    def draw_samples(self, batch: Batch) -> CQLSamples:
        """The TD target and the actions of the conservative term (consumes ``self.rng``, see module doc)."""
        c = self.config
        obs, next_obs = batch.observations, batch.next_observations
        b, n, d = obs.shape[0], c.num_samples, self.act_dim
        next_a, next_log_pi = self.actor.sample(next_obs, self._normal(b, d))
        target_q = self.critic_target(next_obs, next_a).amin(dim=0)
        if c.backup_entropy:
            target_q = target_q - self.entropy_alpha() * next_log_pi
        y = batch.rewards + c.discount * (1.0 - batch.terminals) * target_q
        uniform = torch.rand((b, n, d), generator=self.rng, device=self.device, dtype=self.dtype)
        uniform = (uniform * 2 - 1) * self.max_action
        log_uniform = torch.full((b, n), -d * math.log(2.0 * self.max_action), device=self.device, dtype=self.dtype)
        cur_a, cur_log_pi = self.actor.sample(obs, self._normal(b, n, d))
        nxt_a, nxt_log_pi = self.actor.sample(next_obs, self._normal(b, n, d))
        return CQLSamples(
            torch.cat([uniform, cur_a, nxt_a], dim=1), torch.cat([log_uniform, cur_log_pi, nxt_log_pi], dim=1), y
        )

    def critic_objective(self, batch: Batch, samples: CQLSamples):
        """``objective(critic_params, alpha_cql) -> Terms`` for this batch and these samples."""
        c = self.config
        obs, act = batch.observations, batch.actions
        n = c.num_samples
        obs_rep = obs.unsqueeze(1).expand(-1, samples.actions.shape[1], -1)
        alpha_prime = self.alpha_prime() if c.lagrange else None

        def objective(params: Mapping[str, Tensor], alpha_cql: Tensor) -> Terms:
            q1, q2 = self.critic(obs, act, params)
            td = F.mse_loss(q1, samples.y) + F.mse_loss(q2, samples.y)
            s1, s2 = self.critic(obs_rep, samples.actions, params)  # (B, 3N) each
            gaps = [
                c.temperature * torch.logsumexp((s - samples.log_density) / c.temperature, dim=1) - q
                for s, q in ((s1, q1), (s2, q2))
            ]
            if alpha_prime is None:
                conservative = alpha_cql * (gaps[0].mean() + gaps[1].mean())
            else:
                conservative = sum(alpha_prime * (alpha_cql * g.mean() - c.target_action_gap) for g in gaps)
            value = 0.5 * (s1[:, n : 2 * n].mean() + s2[:, n : 2 * n].mean())
            aux = {"td_loss": td, "gap_mean_1": gaps[0].mean(), "gap_mean_2": gaps[1].mean()}
            return Terms(loss=td + conservative, value=value, constraint=0.5 * (gaps[0] + gaps[1]), aux=aux)

        return objective

    def _critic_step(self, batch: Batch) -> dict[str, Tensor]:
        c = self.config
        objective = self.critic_objective(batch, self.draw_samples(batch))
        self.critic_opt_state, logs = constraint_step(
            self.constraint, objective, self.critic, self.critic_opt, self.critic_opt_state
        )
        record_constraint_step(self.finite_guard, "critic loss", logs, self.coefficient_name)
        gap_means = torch.stack([logs.pop("gap_mean_1"), logs.pop("gap_mean_2")])
        out = named_constraint_logs(logs, "critic_loss", "q_mean", "cql_gap", self.coefficient_name)
        out["alpha_prime"] = self.alpha_prime() if c.lagrange else torch.zeros((), device=self.device, dtype=self.dtype)
        if c.lagrange:
            coef = self.constraint.value().detach()
            alpha_prime = self.log_alpha_prime.exp().clamp(0.0, 1e6)
            prime_loss = -0.5 * (alpha_prime * (coef * gap_means - c.target_action_gap)).sum()
            self.alpha_prime_opt.zero_grad(set_to_none=True)
            prime_loss.backward()
            self.alpha_prime_opt.step()
        return out

    # -- acting and checkpoints -----------------------------------------------------------
    @torch.no_grad()
    def act(self, observations: Tensor) -> Tensor:
        """Deterministic action ``max_action * tanh(mu(s))`` for *normalised* observations."""
        return self.actor.deterministic(observations.to(self.device))


@dataclass
class AdaptiveCQLConfig(LearnedCoefficient, CQLConfig):
    """CQL plus the ``constraint`` block (defaults: ASPC's single configuration); ``cql_alpha`` is alpha_cql's start."""

    def validate(self) -> None:
        super().validate()
        if self.lagrange:
            raise ValueError(
                "cql-adaptive learns alpha_cql itself; the Lagrangian variant (lagrange=True) is for cql only"
            )
        if self.cql_alpha <= 0:
            raise ValueError(f"a learned alpha_cql must start > 0 (softplus), got cql_alpha={self.cql_alpha}")


class AdaptiveCQL(CQL):
    """CQL whose conservatism weight alpha_cql is learned by the bilevel update (inner step: the critic step)."""

    name = "cql-adaptive"
    Config = AdaptiveCQLConfig
    metric_names = CQL.metric_names + BILEVEL_METRICS

    def _make_constraint(self) -> Any:
        c = self.config
        return adaptive_constraint(c.constraint, c.cql_alpha, c.planned_steps, self.device, self.dtype)


__all__ = ["CQL", "CQLConfig", "CQLSamples", "CQL_PRESETS", "AdaptiveCQL", "AdaptiveCQLConfig"]
