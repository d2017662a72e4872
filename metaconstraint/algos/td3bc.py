"""TD3+BC (Fujimoto & Gu, 2021): TD3 whose actor also regresses onto the data's actions.

    critic:  y = r + gamma (1 - d) min_j Q'_j(s', clip(pi'(s') + clip(eps)))
             L_Q = sum_j MSE(Q_j(s, a), y)
    actor:   L_pi = -lambda * mean Q_1(s, pi(s)) + mean (pi(s) - a)^2,
             lambda = alpha / mean |Q_1(s, pi(s))|   (detached), every `policy_freq` steps

The actor step goes through :mod:`metaconstraint.constraint`, so ASPC (a learned alpha)
is this class with a different constraint object and the robust critic.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import functional_call

from .. import optim
from ..batch import Batch
from ..constraint import FixedCoefficient, FixedConstraint, Terms
from ..nets import Actor, CriticEnsemble, make_critic
from .base import AgentBase, init_agent, named_constraint_logs, record_constraint_step, soft_update


@dataclass
class TD3BCConfig:
    """TD3+BC hyper-parameters (defaults: the paper's, for every dataset)."""

    alpha: float = 2.5  # weight of the RL term (lambda = alpha / mean|Q|)
    discount: float = 0.99
    tau: float = 0.005  # Polyak rate of all target networks
    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    policy_noise: float = 0.2  # target policy smoothing std, times max_action
    noise_clip: float = 0.5  # clip of that noise, times max_action
    policy_freq: int = 2  # critic steps per actor step
    actor_hidden: tuple[int, ...] = (256, 256)
    critic: str = "plain"  # "plain" (2x256, the original) or "robust" (3x256 + LayerNorm, TD3+BC*)
    critic_width: int = 256
    critic_depth: int | None = None  # None: the preset's depth
    seed: int = 0
    planned_steps: int = 1_000_000  # gradient steps the run is planned for (learning-rate schedules)

    def validate(self) -> None:
        if self.policy_freq < 1:
            raise ValueError(f"policy_freq must be >= 1, got {self.policy_freq}")
        if not 0.0 < self.tau <= 1.0:
            raise ValueError(f"tau must lie in (0, 1], got {self.tau}")
        if not 0.0 <= self.discount < 1.0:
            raise ValueError(f"discount must lie in [0, 1), got {self.discount}")
        if self.planned_steps < 1:
            raise ValueError(f"planned_steps must be >= 1, got {self.planned_steps}")
        self.actor_hidden = tuple(int(h) for h in self.actor_hidden)


class TD3BC(AgentBase):
    """TD3+BC with a fixed alpha. Subclasses change the actor's constraint object."""

    name = "td3bc"
    checkpointed = ("actor", "actor_target", "critic", "critic_target", "critic_opt", "constraint")
    functional_opt_states = {"actor_opt_state": ("actor_opt", "actor")}
    Config = TD3BCConfig
    metric_names: tuple[str, ...] = ("critic_loss", "actor_loss", "bc_loss", "q_mean", "alpha")

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        max_action: float = 1.0,
        config: TD3BCConfig | None = None,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ):
        c = init_agent(self, obs_dim, act_dim, max_action, config, device, dtype)
        with torch.random.fork_rng(devices=[]):  # reproducible init without touching global RNG
            torch.manual_seed(c.seed)
            self.actor = Actor(obs_dim, act_dim, max_action, c.actor_hidden).to(self.device, dtype)
            self.critic = CriticEnsemble(
                [make_critic(c.critic, obs_dim, act_dim, c.critic_width, c.critic_depth) for _ in range(2)]
            ).to(self.device, dtype)
            self._make_extra_networks()
        self.actor_target = copy.deepcopy(self.actor).requires_grad_(False)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=c.critic_lr)
        self.actor_opt = optim.adam(lr=c.actor_lr)  # functional: the bilevel step differentiates through it
        self.actor_opt_state = self.actor_opt.init(self._actor_params())
        self.constraint = self._make_constraint()
        self.rng = torch.Generator(device=self.device)
        self.rng.manual_seed(c.seed)
        self.num_updates = 0

    # -- pieces subclasses override -------------------------------------------------------
    def _make_extra_networks(self) -> None:
        """Build further networks (value net, VAE, ...) inside the seeded init; none here."""

    def _make_constraint(self) -> Any:
        return FixedConstraint(FixedCoefficient(self.config.alpha, device=self.device, dtype=self.dtype))

    # -- the update --------------------------------------------------------------------------
    def update(self, batch: Batch) -> dict[str, Tensor]:
        """One gradient step: critic always, actor (and targets) every ``policy_freq`` steps."""
        self.num_updates += 1
        logs = self._critic_step(batch)
        if self.num_updates % self.config.policy_freq == 0:
            logs.update(self._actor_step(batch))
            soft_update(self.critic_target, self.critic, self.config.tau)
            soft_update(self.actor_target, self.actor, self.config.tau)
        self.finite_guard.commit(batch)
        return logs

    def _critic_step(self, batch: Batch) -> dict[str, Tensor]:
        with torch.no_grad():
            y = self._td_target(batch, self._smoothed_next_actions(batch))
        return self._fit_critic(batch, y)

    def _smoothed_next_actions(self, batch: Batch) -> Tensor:
        """``clip(pi'(s') + clip(N(0, noise^2)))``: one normal draw from ``self.rng`` per action entry."""
        c = self.config
        noise = torch.randn(batch.actions.shape, generator=self.rng, device=self.device, dtype=batch.actions.dtype)
        noise = (noise * c.policy_noise * self.max_action).clamp(
            -c.noise_clip * self.max_action, c.noise_clip * self.max_action
        )
        return (self.actor_target(batch.next_observations) + noise).clamp(-self.max_action, self.max_action)

    def _td_target(self, batch: Batch, next_actions: Tensor) -> Tensor:
        """``y = r + gamma (1 - d) min_j Q'_j(s', a')`` (subclasses add penalties, e.g. ReBRAC)."""
        target_q = self.critic_target(batch.next_observations, next_actions).amin(dim=0)
        return batch.rewards + self.config.discount * (1.0 - batch.terminals) * target_q

    def _fit_critic(self, batch: Batch, y: Tensor) -> dict[str, Tensor]:
        """One Adam step on ``sum_j MSE(Q_j(s, a), y)``."""
        q1, q2 = self.critic(batch.observations, batch.actions)
        loss = F.mse_loss(q1, y) + F.mse_loss(q2, y)
        self.finite_guard.record("critic loss", loss)
        self.critic_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.critic_opt.step()
        return {"critic_loss": loss.detach()}

    def actor_objective(self, batch: Batch, critic_params: Mapping[str, Tensor] | None = None):
        """``objective(actor_params, alpha) -> Terms`` for this batch (the paper's actor loss).

        ``critic_params``: the critic's parameters to judge with, by name (default: the
        critic's own; :class:`~metaconstraint.algos.ensemble.SeedEnsemble` passes each seed's).
        """
        obs, act = batch.observations, batch.actions

        def objective(params: Mapping[str, Tensor], alpha: Tensor) -> Terms:
            pi = functional_call(self.actor, params, (obs,))
            q = self.critic.q1(obs, pi, critic_params)
            lam = alpha / q.abs().mean().detach()
            bc = (pi - act).pow(2).mean(dim=1)
            return Terms(loss=-lam * q.mean() + bc.mean(), value=q.mean(), constraint=bc)

        return objective

    def _outer_objective(self) -> Any:
        """The objective a coefficient update judges its lookahead by; ``None``: the step's own."""
        return None

    def _actor_params(self) -> dict[str, Tensor]:
        return dict(self.actor.named_parameters())

    def _actor_step(self, batch: Batch) -> dict[str, Tensor]:
        params = self._actor_params()
        result = self.constraint.step(
            self.actor_objective(batch), params, self.actor_opt, self.actor_opt_state, self._outer_objective()
        )
        with torch.no_grad():
            for k, p in params.items():
                p.copy_(result.params[k])
        self.actor_opt_state = result.opt_state
        record_constraint_step(self.finite_guard, "actor loss", result.logs, self.coefficient_name)
        return named_constraint_logs(result.logs, "actor_loss", "q_mean", "bc_loss", self.coefficient_name)

    # -- acting and checkpoints -----------------------------------------------------------
    @torch.no_grad()
    def act(self, observations: Tensor) -> Tensor:
        """Deterministic action for *normalised* observations."""
        return self.actor(observations.to(self.device))


__all__ = ["TD3BC", "TD3BCConfig", "init_agent", "soft_update"]
