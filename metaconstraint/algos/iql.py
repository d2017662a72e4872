"""IQL (Kostrikov et al., 2021) and IQL with a learned advantage temperature beta.

Per update, in this order (as in the original):

    value:   u = min_j Q'_j(s, a) - V(s);   L_V = mean |tau - 1(u < 0)| u^2,   tau = 0.7
    actor:   A = min_j Q'_j(s, a) - V(s)  (V after its step);
             L_pi = mean[min(exp(beta A), 100) * (-log pi(a|s))],   beta = 3
    critic:  y = r + gamma (1 - d) V(s');   L_Q = 1/2 sum_j mean (y - Q_j(s, a))^2
    targets: Q'_j <- Polyak(Q_j, tau = 0.005)

(Q' are the target critics.) The Gaussian policy is N(max_action * tanh(MLP(s)), sigma^2) with a
state-independent log sigma; ``policy="deterministic"`` replaces -log pi(a|s) by
||pi(s) - a||^2 (sum over action dimensions). The actor's Adam lr follows a cosine decay to
0 over ``planned_steps``. Networks 2x256 (actor, both critics, V), Adam 3e-4. Acting is
deterministic (the mean). ``exp(beta A)`` is computed as ``exp(min(beta A, log 100))``, the
same value without overflow.

``iql-adaptive`` (:class:`AdaptiveIQL`) learns beta with the bilevel module
(:class:`metaconstraint.constraint.AdaptiveConstraint`, unchanged):

* coefficient: beta = softplus(rho), started at ``beta`` (3); the loss has the shape
  ``L_constraint`` weighted by ``exp(beta * A)``: beta trades imitation of every action (beta = 0,
  plain BC) against imitation of high-advantage actions only (large beta, greedy);
* inner step: the actor's Adam step on L_pi(theta; beta), differentiated (``create_graph=True``),
  with V and the critics held fixed;
* outer loss: L1 = L_pi(theta~; beta detached) + L2 + L3, with
  ``Terms.value`` = mean min_j Q'_j(s, mu_theta(s)) (the target critics' value of the policy's
  mean action: dQ is its change), ``Terms.constraint`` = mean_dims (mu_theta(s) - a)^2 per sample
  (B, dB: the largest BC distance of the mean action and its largest change).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import Tensor
from torch.func import functional_call

from .. import optim
from ..batch import Batch
from ..constraint import FixedCoefficient, FixedConstraint, Terms, adaptive_constraint
from ..nets import Actor, Critic, CriticEnsemble, GaussianActor, ValueNet, gaussian_log_prob
from ..data.reference import ANTMAZE_DATASETS
from .common import BILEVEL_METRICS, LearnedCoefficient, constraint_step
from .base import AgentBase, init_agent, named_constraint_logs, record_constraint_step, soft_update

POLICIES = ("gaussian", "deterministic")

# the IQL authors' per-domain settings listed in the spec, by domain and by D4RL dataset
# (the MuJoCo ones are the defaults)
IQL_PRESETS: dict[str, dict[str, Any]] = {
    "mujoco": dict(expectile=0.7, beta=3.0),
    "antmaze": dict(expectile=0.9, beta=10.0),
    **{name: dict(expectile=0.9, beta=10.0) for name in ANTMAZE_DATASETS},
}


@dataclass
class IQLConfig:
    """IQL hyper-parameters (defaults: the paper's MuJoCo ones)."""

    expectile: float = 0.7  # tau of the expectile regression
    beta: float = 3.0  # advantage temperature (the starting value in iql-adaptive)
    max_weight: float = 100.0  # cap on exp(beta A)
    discount: float = 0.99
    tau: float = 0.005  # Polyak rate of the target critics
    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    value_lr: float = 3e-4
    actor_lr_schedule: str = "cosine"  # "cosine" (decay to 0 over planned_steps) or "constant"
    policy: str = "gaussian"  # "gaussian" or "deterministic"
    actor_hidden: tuple[int, ...] = (256, 256)
    critic_width: int = 256
    critic_depth: int = 2
    value_hidden: tuple[int, ...] = (256, 256)
    seed: int = 0
    planned_steps: int = 1_000_000

    def validate(self) -> None:
        if not 0.0 < self.expectile < 1.0:
            raise ValueError(f"expectile must lie in (0, 1), got {self.expectile}")
        if self.beta < 0 or self.max_weight <= 0:
            raise ValueError(f"beta must be >= 0 and max_weight > 0, got {self.beta}, {self.max_weight}")
        if self.policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got '{self.policy}'")
        if self.actor_lr_schedule not in ("cosine", "constant"):
            raise ValueError(f"actor_lr_schedule must be 'cosine' or 'constant', got '{self.actor_lr_schedule}'")
        if not 0.0 < self.tau <= 1.0:
            raise ValueError(f"tau must lie in (0, 1], got {self.tau}")
        if not 0.0 <= self.discount < 1.0:
            raise ValueError(f"discount must lie in [0, 1), got {self.discount}")
        if self.planned_steps < 1:
            raise ValueError(f"planned_steps must be >= 1, got {self.planned_steps}")
        if self.critic_width < 1 or self.critic_depth < 1:
            raise ValueError(f"critic_width and critic_depth must be >= 1, got {self.critic_width}, {self.critic_depth}")
        for f in ("actor_hidden", "value_hidden"):
            setattr(self, f, tuple(int(h) for h in getattr(self, f)))


def cosine_decay(lr: float, steps: int):
    """``lr * (1 + cos(pi * min(t, steps) / steps)) / 2`` as a schedule of the optimizer's count."""

    def schedule(count: int) -> float:
        return lr * 0.5 * (1.0 + math.cos(math.pi * min(count, steps) / steps))

    return schedule


class IQL(AgentBase):
    """Implicit Q-learning with a fixed temperature beta."""

    name = "iql"
    checkpointed = ("actor", "critic", "critic_target", "value", "critic_opt", "value_opt", "constraint")
    functional_opt_states = {"actor_opt_state": ("actor_opt", "actor")}
    Config = IQLConfig
    coefficient_name = "beta"
    metric_names: tuple[str, ...] = ("value_loss", "critic_loss", "actor_loss", "adv_mean", "bc_loss", "q_mean", "beta")
    presets = IQL_PRESETS

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        max_action: float = 1.0,
        config: IQLConfig | None = None,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ):
        c = init_agent(self, obs_dim, act_dim, max_action, config, device, dtype)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(c.seed)
            if c.policy == "gaussian":
                self.actor = GaussianActor(obs_dim, act_dim, max_action, c.actor_hidden)
            else:
                self.actor = Actor(obs_dim, act_dim, max_action, c.actor_hidden)
            self.actor.to(self.device, dtype)
            hidden = (c.critic_width,) * c.critic_depth
            self.critic = CriticEnsemble([Critic(obs_dim, act_dim, hidden) for _ in range(2)]).to(self.device, dtype)
            self.value = ValueNet(obs_dim, c.value_hidden).to(self.device, dtype)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=c.critic_lr)
        self.value_opt = torch.optim.Adam(self.value.parameters(), lr=c.value_lr)
        self.actor_lr = cosine_decay(c.actor_lr, c.planned_steps) if c.actor_lr_schedule == "cosine" else c.actor_lr
        self.actor_opt = optim.adam(lr=self.actor_lr)
        self.actor_opt_state = self.actor_opt.init(dict(self.actor.named_parameters()))
        self.constraint = self._make_constraint()
        self.rng = torch.Generator(device=self.device)  # IQL draws nothing; kept for a uniform checkpoint
        self.rng.manual_seed(c.seed)
        self.num_updates = 0

    def _make_constraint(self) -> Any:
        return FixedConstraint(FixedCoefficient(self.config.beta, device=self.device, dtype=self.dtype))

    # -- the update --------------------------------------------------------------------------
    def update(self, batch: Batch) -> dict[str, Tensor]:
        """Value, actor, critic, target critics: one step each."""
        self.num_updates += 1
        logs = self._value_step(batch)
        logs.update(self._actor_step(batch))
        logs.update(self._critic_step(batch))
        soft_update(self.critic_target, self.critic, self.config.tau)
        self.finite_guard.commit(batch)
        return logs

    def _value_step(self, batch: Batch) -> dict[str, Tensor]:
        with torch.no_grad():
            q = self.critic_target(batch.observations, batch.actions).amin(dim=0)
        u = q - self.value(batch.observations)
        loss = ((self.config.expectile - (u < 0).to(u.dtype)).abs() * u.pow(2)).mean()
        self.finite_guard.record("value loss", loss)
        self.value_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.value_opt.step()
        return {"value_loss": loss.detach()}

    def _critic_step(self, batch: Batch) -> dict[str, Tensor]:
        with torch.no_grad():
            y = batch.rewards + self.config.discount * (1.0 - batch.terminals) * self.value(batch.next_observations)
        q1, q2 = self.critic(batch.observations, batch.actions)
        loss = 0.5 * ((y - q1).pow(2).mean() + (y - q2).pow(2).mean())
        self.finite_guard.record("critic loss", loss)
        self.critic_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.critic_opt.step()
        return {"critic_loss": loss.detach()}

    def _mean_action(self, params: Mapping[str, Tensor], obs: Tensor) -> tuple[Tensor, Tensor | None]:
        out = functional_call(self.actor, params, (obs,))
        return (out[0], out[1]) if isinstance(out, tuple) else (out, None)

    def advantages(self, batch: Batch) -> Tensor:
        """``min_j Q'_j(s, a) - V(s)`` (no gradient)."""
        with torch.no_grad():
            return self.critic_target(batch.observations, batch.actions).amin(dim=0) - self.value(batch.observations)

    def actor_objective(self, batch: Batch):
        """``objective(actor_params, beta) -> Terms``: advantage-weighted regression on this batch."""
        obs, act = batch.observations, batch.actions
        adv = self.advantages(batch)
        log_cap = math.log(self.config.max_weight)
        stats = {"adv_mean": adv.mean()}

        def objective(params: Mapping[str, Tensor], beta: Tensor) -> Terms:
            mean, log_std = self._mean_action(params, obs)
            if log_std is None:
                nll = (mean - act).pow(2).sum(dim=1)
            else:
                nll = -gaussian_log_prob(mean, log_std, act)
            weight = torch.exp(torch.clamp(beta * adv, max=log_cap))
            q = self.critic_target(obs, mean).amin(dim=0)
            bc = (mean - act).pow(2).mean(dim=1)
            return Terms(loss=(weight * nll).mean(), value=q.mean(), constraint=bc, aux=stats)

        return objective

    def _actor_step(self, batch: Batch) -> dict[str, Tensor]:
        self.actor_opt_state, logs = constraint_step(
            self.constraint, self.actor_objective(batch), self.actor, self.actor_opt, self.actor_opt_state
        )
        record_constraint_step(self.finite_guard, "actor loss", logs, self.coefficient_name)
        return named_constraint_logs(logs, "actor_loss", "q_mean", "bc_loss", self.coefficient_name)

    # -- acting and checkpoints -----------------------------------------------------------
    @torch.no_grad()
    def act(self, observations: Tensor) -> Tensor:
        """Deterministic action (the policy's mean) for *normalised* observations."""
        out = self.actor(observations.to(self.device))
        return out[0] if isinstance(out, tuple) else out


@dataclass
class AdaptiveIQLConfig(LearnedCoefficient, IQLConfig):
    """IQL plus the ``constraint`` block (defaults: ASPC's single configuration); ``beta`` is beta's start."""

    def validate(self) -> None:
        super().validate()
        if self.beta <= 0:
            raise ValueError(f"a learned beta must start > 0 (softplus), got beta={self.beta}")


class AdaptiveIQL(IQL):
    """IQL whose advantage temperature beta is learned by the bilevel update."""

    name = "iql-adaptive"
    Config = AdaptiveIQLConfig
    metric_names = IQL.metric_names + BILEVEL_METRICS

    def _make_constraint(self) -> Any:
        c = self.config
        return adaptive_constraint(c.constraint, c.beta, c.planned_steps, self.device, self.dtype)


__all__ = ["IQL", "IQLConfig", "IQL_PRESETS", "AdaptiveIQL", "AdaptiveIQLConfig", "cosine_decay"]
