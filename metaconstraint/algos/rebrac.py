"""ReBRAC (Tarasov et al., 2023) and ReBRAC with a learned actor BC weight beta1.

ReBRAC is TD3+BC with deeper networks, a behaviour penalty in the critic target, and the BC
weight on the constraint side of the actor loss:

    critic:  y = r + gamma (1 - d) [min_j Q'_j(s', a~') - beta2 * m * ||a~' - a'||^2]
             a~' = clip(pi'(s') + clip(eps)) (TD3 smoothing), a' the dataset's next action,
             m = next_action_mask (0 where the next action is undefined: the penalty is dropped)
             L_Q = sum_j MSE(Q_j(s, a), y)
    actor:   L_pi = mean[beta1 * ||pi(s) - a||^2] - lambda * mean min_j Q_j(s, pi(s)),
             lambda = alpha / mean|min_j Q_j(s, pi(s))|  (detached; alpha = 1 in ReBRAC)
    ||.||^2 is the sum over action dimensions; actor every ``policy_freq`` = 2 critic steps.

Networks: actor 3x256 (tanh output), critics 3x256 with LayerNorm (the robust critic), Adam
lr 1e-3 for both. The original uses batch 1024 on MuJoCo (a sampler setting: see
``ReBRAC.batch_size``) and tunes (beta1, beta2) per dataset (``REBRAC_PRESETS``).

``rebrac-adaptive`` (:class:`AdaptiveReBRAC`) learns beta1 with the bilevel module
(:class:`metaconstraint.constraint.AdaptiveConstraint`, unchanged):

* coefficient: beta1 = softplus(rho), started at ``actor_bc_coef``; beta2 stays fixed;
* inner step: the actor's Adam step on L_pi(theta; beta1), differentiated
  (``create_graph=True``) so theta~ is a function of beta1; the critic is held fixed;
* outer loss: L1 = L_pi(theta~; beta1 detached) (lambda's denominator detached, as in the
  inner loss) + L2 + L3, with
  ``Terms.value`` = mean min_j Q_j(s, pi(s)), so dQ is the change (EMA or one-step) of the
  critics' value of the policy; ``Terms.constraint`` = ||pi(s) - a||^2 per sample, so B is
  the largest BC distance before the step and dB the largest change of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import Tensor
from torch.func import functional_call

from ..batch import Batch
from ..constraint import AdaptiveConstraint, FixedCoefficient, FixedConstraint, Terms, adaptive_constraint
from .common import BILEVEL_METRICS, LearnedCoefficient
from .td3bc import TD3BC, TD3BCConfig

# (beta1, beta2) the ReBRAC authors used, for the datasets the spec lists.
REBRAC_PRESETS: dict[str, dict[str, Any]] = {
    "hopper-medium": dict(actor_bc_coef=0.01, critic_bc_coef=0.01),
    "halfcheetah-random": dict(actor_bc_coef=0.001, critic_bc_coef=0.1),
    "walker2d-expert": dict(actor_bc_coef=0.01, critic_bc_coef=0.5),
}


@dataclass
class ReBRACConfig(TD3BCConfig):
    """ReBRAC settings. ``alpha`` is the RL term's weight (lambda = alpha / mean|min Q|; ReBRAC: 1)."""

    alpha: float = 1.0
    actor_bc_coef: float = 0.01  # beta1 (the starting value in rebrac-adaptive)
    critic_bc_coef: float = 0.01  # beta2
    actor_lr: float = 1e-3
    critic_lr: float = 1e-3
    actor_hidden: tuple[int, ...] = (256, 256, 256)
    critic: str = "robust"

    def validate(self) -> None:
        super().validate()
        if self.actor_bc_coef < 0 or self.critic_bc_coef < 0:
            raise ValueError(
                f"actor_bc_coef and critic_bc_coef must be >= 0, got {self.actor_bc_coef}, {self.critic_bc_coef}"
            )


class ReBRAC(TD3BC):
    """ReBRAC with fixed beta1, beta2."""

    name = "rebrac"
    Config = ReBRACConfig
    coefficient_name = "beta1"
    metric_names = ("critic_loss", "actor_loss", "bc_loss", "q_mean", "beta1", "critic_penalty")
    presets = REBRAC_PRESETS
    batch_size = 1024  # the original's MuJoCo batch size (the sampler's setting)

    def _make_constraint(self) -> Any:
        return FixedConstraint(FixedCoefficient(self.config.actor_bc_coef, device=self.device, dtype=self.dtype))

    def _critic_step(self, batch: Batch) -> dict[str, Tensor]:
        with torch.no_grad():
            next_actions = self._smoothed_next_actions(batch)
            penalty = batch.next_action_mask * (next_actions - batch.next_actions).pow(2).sum(dim=1)
            y = self._td_target(batch, next_actions)
            y = y - self.config.discount * (1.0 - batch.terminals) * self.config.critic_bc_coef * penalty
        logs = self._fit_critic(batch, y)
        logs["critic_penalty"] = penalty.mean()
        return logs

    def actor_objective(self, batch: Batch):
        """``objective(actor_params, beta1) -> Terms`` for this batch."""
        obs, act = batch.observations, batch.actions
        alpha = self.config.alpha

        def objective(params: Mapping[str, Tensor], beta1: Tensor) -> Terms:
            pi = functional_call(self.actor, params, (obs,))
            q = self.critic(obs, pi).amin(dim=0)
            lam = alpha / q.abs().mean().detach()
            bc = (pi - act).pow(2).sum(dim=1)
            return Terms(loss=beta1 * bc.mean() - lam * q.mean(), value=q.mean(), constraint=bc)

        return objective


@dataclass
class AdaptiveReBRACConfig(LearnedCoefficient, ReBRACConfig):
    """ReBRAC plus the ``constraint`` block (defaults: ASPC's single configuration); ``actor_bc_coef`` is
    beta1's start."""

    def validate(self) -> None:
        super().validate()
        if self.actor_bc_coef <= 0:
            raise ValueError(f"a learned beta1 must start > 0 (softplus), got actor_bc_coef={self.actor_bc_coef}")


class AdaptiveReBRAC(ReBRAC):
    """ReBRAC whose actor BC weight beta1 is learned by the bilevel update."""

    name = "rebrac-adaptive"
    Config = AdaptiveReBRACConfig
    metric_names = ReBRAC.metric_names + BILEVEL_METRICS

    def _make_constraint(self) -> AdaptiveConstraint:
        c = self.config
        planned_actor_steps = c.planned_steps // c.policy_freq
        return adaptive_constraint(c.constraint, c.actor_bc_coef, planned_actor_steps, self.device, self.dtype)


__all__ = ["REBRAC_PRESETS", "AdaptiveReBRAC", "AdaptiveReBRACConfig", "ReBRAC", "ReBRACConfig"]
