"""wPC, weighted policy constraint: TD3+BC whose BC term only pulls towards better-than-average actions.

    critic:  TD3+BC's (y = r + gamma (1 - d) min_j Q'_j(s', a~'), L_Q = sum_j MSE(Q_j(s, a), y))
    value:   L_V = MSE(V(s), y)              (the same TD target y, every critic step)
    weight:  w_i = 1[Q_1(s_i, a_i) > V(s_i)]   (current critic and value net, no gradient)
    actor:   L_pi = -lambda * mean Q_1(s, pi(s)) + (1/N) sum_i w_i * mean_dims (pi(s_i) - a_i)^2,
             lambda = alpha / mean|Q_1(s, pi(s))| (detached), alpha = 2.5, every 2 critic steps

The BC sum is divided by the batch size N, not by sum(w). V is 2x256 (Adam 3e-4); the
critic is the robust one by default (wPC* in the ASPC paper). The per-sample BC distance is
the mean over action dimensions (the spec's shared convention).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import functional_call

from ..batch import Batch
from ..constraint import Terms
from ..nets import ValueNet
from .td3bc import TD3BC, TD3BCConfig


@dataclass
class WPCConfig(TD3BCConfig):
    """TD3+BC settings plus the value net's."""

    critic: str = "robust"
    value_hidden: tuple[int, ...] = (256, 256)
    value_lr: float = 3e-4

    def validate(self) -> None:
        super().validate()
        self.value_hidden = tuple(int(h) for h in self.value_hidden)


class WPC(TD3BC):
    """TD3+BC with the BC term weighted by 1[Q(s, a) > V(s)]."""

    name = "wpc"
    Config = WPCConfig
    checkpointed = TD3BC.checkpointed + ("value", "value_opt")
    metric_names = TD3BC.metric_names + ("value_loss", "bc_weight")

    def _make_extra_networks(self) -> None:
        self.value = ValueNet(self.obs_dim, self.config.value_hidden).to(self.device, self.dtype)
        self.value_opt = torch.optim.Adam(self.value.parameters(), lr=self.config.value_lr)

    def _critic_step(self, batch: Batch) -> dict[str, Tensor]:
        with torch.no_grad():
            y = self._td_target(batch, self._smoothed_next_actions(batch))
        logs = self._fit_critic(batch, y)
        value_loss = F.mse_loss(self.value(batch.observations), y)
        self.finite_guard.record("value loss", value_loss)
        self.value_opt.zero_grad(set_to_none=True)
        value_loss.backward()
        self.value_opt.step()
        logs["value_loss"] = value_loss.detach()
        return logs

    def bc_weights(self, batch: Batch) -> Tensor:
        """``1[Q_1(s, a) > V(s)]`` per sample (no gradient)."""
        with torch.no_grad():
            return (self.critic.q1(batch.observations, batch.actions) > self.value(batch.observations)).to(self.dtype)

    def actor_objective(self, batch: Batch):
        """``objective(actor_params, alpha) -> Terms``; the constraint is the weighted per-sample BC."""
        obs, act = batch.observations, batch.actions
        w = self.bc_weights(batch)
        stats = {"bc_weight": w.mean()}

        def objective(params: Mapping[str, Tensor], alpha: Tensor) -> Terms:
            pi = functional_call(self.actor, params, (obs,))
            q = self.critic.q1(obs, pi)
            lam = alpha / q.abs().mean().detach()
            bc = w * (pi - act).pow(2).mean(dim=1)
            return Terms(loss=-lam * q.mean() + bc.mean(), value=q.mean(), constraint=bc, aux=stats)

        return objective


__all__ = ["WPC", "WPCConfig"]
