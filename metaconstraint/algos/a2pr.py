"""A2PR (Liu et al., ICML 2024): adaptive advantage-guided policy regularisation.

TD3+BC whose BC target is chosen per sample between the data action and a VAE's
reconstruction of the policy's action, whichever has the larger advantage Q_1 - V:

    critic:  TD3+BC's, y = r + gamma (1 - d) min_j Q'_j(s', a~')  (a~' the smoothed target action)
    value:   L_V = MSE(V(s), min(y, y_on)),  y_on = r + gamma (1 - d) min_j Q_j(s', a~')
             (the online critics, after their step, at the same a~')
    VAE:     L_VAE = mean[w * (a_hat(s, a) - a)^2] + 0.5 * KL,  w = 1[Q_1(s, a) > V(s)],
             KL = -0.5 mean(1 + log sigma^2 - mu^2 - sigma^2),  z = mu + sigma * eps
    actor:   a_hat = VAE reconstruction of (s, pi(s));  A(x) = Q_1(s, x) - V(s);
             a_tgt = a_hat where A(a_hat) >= A(a), else a;
             L_pi = -lambda * mean Q_1(s, pi(s)) + mean[eta * (1[Q_1(s, a_hat) >= V] + 1[Q_1(s, a) > V]) * (pi(s) - a_tgt)^2]
             lambda = alpha / mean|Q_1(s, pi(s))| (detached); alpha = 2.5, eta = 0.5

The BC target a_tgt and its weight are constants for the actor's gradient (the gradient flows
through pi(s) only). Networks: actor 3x256, critics 4x256 without LayerNorm, V 4x256, VAE
750-750 with latent 2 * act_dim (Adam 1e-3; critic, V and actor Adam 3e-4).

Random draws from ``self.rng`` per update, in order: target-policy noise (TD3BC), the VAE's
latent noise for (s, a), and on actor steps the latent noise for (s, pi(s)).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import functional_call

from ..batch import Batch
from ..constraint import Terms
from ..nets import VAE, ValueNet
from .td3bc import TD3BC, TD3BCConfig

# settings from the A2PR authors' public run commands (alpha, eta, VAE weight, discount)
A2PR_PRESETS: dict[str, dict[str, Any]] = {
    "hopper-medium": dict(alpha=2.5, eta=0.4, vae_weight=1.0, discount=0.995),
    "halfcheetah-medium": dict(alpha=40.0, eta=1.0, vae_weight=1.0, discount=0.99),
    "walker2d-medium": dict(alpha=2.5, eta=1.0, vae_weight=1.5, discount=0.99),
}


@dataclass
class A2PRConfig(TD3BCConfig):
    """TD3+BC settings plus A2PR's (defaults: the spec's)."""

    actor_hidden: tuple[int, ...] = (256, 256, 256)
    critic: str = "plain"
    critic_depth: int | None = 4
    value_hidden: tuple[int, ...] = (256, 256, 256, 256)
    value_lr: float = 3e-4
    vae_hidden: tuple[int, ...] = (750, 750)
    vae_lr: float = 1e-3
    vae_weight: float = 1.0  # scales the weighted reconstruction term
    eta: float = 0.5  # BC weight per advantage indicator

    def validate(self) -> None:
        super().validate()
        self.value_hidden = tuple(int(h) for h in self.value_hidden)
        self.vae_hidden = tuple(int(h) for h in self.vae_hidden)
        if len(self.vae_hidden) < 1:
            raise ValueError("vae_hidden needs at least one layer")
        if self.eta < 0 or self.vae_weight < 0:
            raise ValueError(f"eta and vae_weight must be >= 0, got {self.eta}, {self.vae_weight}")


class A2PR(TD3BC):
    """TD3+BC with an advantage-selected BC target (data action or VAE-refined policy action)."""

    name = "a2pr"
    checkpointed = TD3BC.checkpointed + ("value", "value_opt", "vae", "vae_opt")
    Config = A2PRConfig
    metric_names = TD3BC.metric_names + ("value_loss", "vae_loss", "recon_loss", "kl_loss", "vae_target_frac")
    presets = A2PR_PRESETS

    def _make_extra_networks(self) -> None:
        c = self.config
        self.value = ValueNet(self.obs_dim, c.value_hidden).to(self.device, self.dtype)
        self.vae = VAE(self.obs_dim, self.act_dim, 2 * self.act_dim, self.max_action, c.vae_hidden).to(
            self.device, self.dtype
        )
        self.value_opt = torch.optim.Adam(self.value.parameters(), lr=c.value_lr)
        self.vae_opt = torch.optim.Adam(self.vae.parameters(), lr=c.vae_lr)

    def _latent_noise(self, n: int) -> Tensor:
        return torch.randn((n, self.vae.latent_dim), generator=self.rng, device=self.device, dtype=self.dtype)

    def _critic_step(self, batch: Batch) -> dict[str, Tensor]:
        c = self.config
        obs, act = batch.observations, batch.actions
        with torch.no_grad():
            next_actions = self._smoothed_next_actions(batch)
            y = self._td_target(batch, next_actions)
        logs = self._fit_critic(batch, y)
        with torch.no_grad():
            q_next_online = self.critic(batch.next_observations, next_actions).amin(dim=0)
            y_online = batch.rewards + c.discount * (1.0 - batch.terminals) * q_next_online
            v_target = torch.min(y, y_online)
        v = self.value(obs)
        value_loss = F.mse_loss(v, v_target)
        self.finite_guard.record("value loss", value_loss)
        self.value_opt.zero_grad(set_to_none=True)
        value_loss.backward()
        self.value_opt.step()

        with torch.no_grad():
            w = (self.critic.q1(obs, act) > v).to(self.dtype)  # V before its step, as in the reference code
        recon, mean, std = self.vae(obs, act, self._latent_noise(obs.shape[0]))
        recon_loss = (c.vae_weight * w.unsqueeze(1) * (recon - act).pow(2)).mean()
        kl_loss = -0.5 * (1.0 + torch.log(std.pow(2)) - mean.pow(2) - std.pow(2)).mean()
        vae_loss = recon_loss + 0.5 * kl_loss
        self.finite_guard.record("VAE loss", vae_loss)
        self.vae_opt.zero_grad(set_to_none=True)
        vae_loss.backward()
        self.vae_opt.step()
        logs.update(
            value_loss=value_loss.detach(),
            vae_loss=vae_loss.detach(),
            recon_loss=recon_loss.detach(),
            kl_loss=kl_loss.detach(),
        )
        return logs

    def actor_objective(self, batch: Batch):
        """``objective(actor_params, alpha) -> Terms``; draws the VAE's latent noise once, here."""
        obs, act = batch.observations, batch.actions
        eta = self.config.eta
        noise = self._latent_noise(obs.shape[0])
        with torch.no_grad():
            v = self.value(obs)
            q_data = self.critic.q1(obs, act)

        def objective(params: Mapping[str, Tensor], alpha: Tensor) -> Terms:
            pi = functional_call(self.actor, params, (obs,))
            with torch.no_grad():
                a_hat, _, _ = self.vae(obs, pi, noise)
                q_hat = self.critic.q1(obs, a_hat)
                use_hat = (q_hat - v) >= (q_data - v)
                target = torch.where(use_hat.unsqueeze(1), a_hat, act)
                weight = eta * ((q_hat >= v).to(pi.dtype) + (q_data > v).to(pi.dtype))
            q = self.critic.q1(obs, pi)
            lam = alpha / q.abs().mean().detach()
            bc = weight * (pi - target).pow(2).mean(dim=1)
            aux = {"vae_target_frac": use_hat.to(pi.dtype).mean()}
            return Terms(loss=-lam * q.mean() + bc.mean(), value=q.mean(), constraint=bc, aux=aux)

        return objective


__all__ = ["A2PR", "A2PRConfig", "A2PR_PRESETS"]
