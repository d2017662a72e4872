"""Networks used by the algorithms: deterministic actor, (robust) critics, value nets.

The "robust critic" of ASPC (spec: 3x256, ReLU followed by LayerNorm after every hidden
layer, hidden weights U(+-1/sqrt(fan_in)), hidden biases 0.1, last layer U(+-3e-3)) is
``Critic(..., hidden=(256, 256, 256), layer_norm=True, robust_init=True)``; the original
TD3+BC critic is ``Critic(..., hidden=(256, 256))``. :func:`make_critic` names both.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn

__all__ = [
    "mlp",
    "Actor",
    "Critic",
    "TwinCritic",
    "ValueNet",
    "make_critic",
    "params_of",
    "CRITIC_PRESETS",
    "GaussianActor",
    "TanhGaussianActor",
    "VAE",
    "gaussian_log_prob",
]


def mlp(
    in_dim: int,
    hidden: Sequence[int],
    out_dim: int,
    layer_norm: bool = False,
    robust_init: bool = False,
) -> nn.Sequential:
    """Linear -> ReLU [-> LayerNorm] blocks, then a final Linear."""
    layers: list[nn.Module] = []
    d = in_dim
    for h in hidden:
        lin = nn.Linear(d, h)
        if robust_init:
            bound = 1.0 / math.sqrt(d)
            nn.init.uniform_(lin.weight, -bound, bound)
            nn.init.constant_(lin.bias, 0.1)
        layers += [lin, nn.ReLU()]
        if layer_norm:
            layers.append(nn.LayerNorm(h))
        d = h
    last = nn.Linear(d, out_dim)
    if robust_init:
        nn.init.uniform_(last.weight, -3e-3, 3e-3)
        nn.init.uniform_(last.bias, -3e-3, 3e-3)
    layers.append(last)
    return nn.Sequential(*layers)


class Actor(nn.Module):
    """Deterministic policy ``s -> max_action * tanh(MLP(s))``."""

    def __init__(self, obs_dim: int, act_dim: int, max_action: float = 1.0, hidden: Sequence[int] = (256, 256)):
        super().__init__()
        self.net = mlp(obs_dim, hidden, act_dim)
        self.max_action = float(max_action)

    def forward(self, obs: Tensor) -> Tensor:
        return self.max_action * torch.tanh(self.net(obs))


class Critic(nn.Module):
    """``Q(s, a)`` as an MLP on the concatenation ``[s, a]``; returns shape ``(batch,)``."""

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        hidden: Sequence[int] = (256, 256),
        layer_norm: bool = False,
        robust_init: bool = False,
    ):
        super().__init__()
        self.net = mlp(obs_dim + act_dim, hidden, 1, layer_norm=layer_norm, robust_init=robust_init)

    def forward(self, obs: Tensor, act: Tensor) -> Tensor:
        return self.net(torch.cat([obs, act], dim=-1)).squeeze(-1)


CRITIC_PRESETS: dict[str, dict] = {
    # ASPC's critic (also TD3+BC* in the paper): 3 hidden layers, LayerNorm, special init.
    "robust": dict(layer_norm=True, robust_init=True, depth=3),
    # Fujimoto & Gu's TD3+BC critic: 2 hidden layers, PyTorch default init.
    "plain": dict(layer_norm=False, robust_init=False, depth=2),
}


def make_critic(kind: str, obs_dim: int, act_dim: int, width: int = 256, depth: int | None = None) -> Critic:
    """A critic from a preset name (``"robust"`` or ``"plain"``); ``depth`` overrides the preset's."""
    if kind not in CRITIC_PRESETS:
        raise ValueError(f"unknown critic '{kind}'; choose one of {sorted(CRITIC_PRESETS)}")
    p = CRITIC_PRESETS[kind]
    n = p["depth"] if depth is None else depth
    return Critic(obs_dim, act_dim, (width,) * n, layer_norm=p["layer_norm"], robust_init=p["robust_init"])


class TwinCritic(nn.Module):
    """Two independent critics; ``forward`` returns ``(q1, q2)``."""

    def __init__(self, q1: Critic, q2: Critic):
        super().__init__()
        self.q1, self.q2 = q1, q2

    def forward(self, obs: Tensor, act: Tensor) -> tuple[Tensor, Tensor]:
        return self.q1(obs, act), self.q2(obs, act)


class ValueNet(nn.Module):
    """``V(s)`` as an MLP; returns shape ``(batch,)``."""

    def __init__(self, obs_dim: int, hidden: Sequence[int] = (256, 256), layer_norm: bool = False):
        super().__init__()
        self.net = mlp(obs_dim, hidden, 1, layer_norm=layer_norm)

    def forward(self, obs: Tensor) -> Tensor:
        return self.net(obs).squeeze(-1)


def params_of(module: nn.Module) -> dict[str, Tensor]:
    """The module's parameters as a name -> tensor dict (the form :mod:`metaconstraint.optim` uses)."""
    return {k: v for k, v in module.named_parameters()}


def gaussian_log_prob(mean: Tensor, log_std: Tensor, x: Tensor) -> Tensor:
    """Log density of a diagonal Gaussian, summed over the last dimension."""
    z = (x - mean) * torch.exp(-log_std)
    return (-0.5 * z.pow(2) - log_std - 0.5 * math.log(2.0 * math.pi)).sum(-1)


class GaussianActor(nn.Module):
    """IQL's policy: ``N(max_action * tanh(MLP(s)), exp(log_std)^2)``, log_std a state-independent parameter.

    ``forward`` returns ``(mean, log_std)`` with ``log_std`` clamped to ``[log_std_min, log_std_max]``
    and broadcast to the mean's shape; the deterministic action is the mean.
    """

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        max_action: float = 1.0,
        hidden: Sequence[int] = (256, 256),
        log_std_min: float = -10.0,
        log_std_max: float = 2.0,
    ):
        super().__init__()
        self.net = mlp(obs_dim, hidden, act_dim)
        self.log_std = nn.Parameter(torch.zeros(act_dim))
        self.max_action = float(max_action)
        self.log_std_min, self.log_std_max = float(log_std_min), float(log_std_max)

    def forward(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        mean = self.max_action * torch.tanh(self.net(obs))
        log_std = self.log_std.clamp(self.log_std_min, self.log_std_max).expand_as(mean)
        return mean, log_std

    def log_prob(self, obs: Tensor, actions: Tensor) -> Tensor:
        """``log pi(a | s)``, shape ``(batch,)``."""
        mean, log_std = self(obs)
        return gaussian_log_prob(mean, log_std, actions)


class TanhGaussianActor(nn.Module):
    """SAC/CQL's policy: ``a = max_action * tanh(u)``, ``u ~ N(mu(s), sigma(s)^2)``.

    ``forward`` returns ``(mu, log_std)`` (log_std clamped); :meth:`sample` draws reparameterised
    actions with their log-probabilities (change of variables through tanh and the scale).
    """

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        max_action: float = 1.0,
        hidden: Sequence[int] = (256, 256, 256),
        log_std_min: float = -20.0,
        log_std_max: float = 2.0,
    ):
        super().__init__()
        self.net = mlp(obs_dim, hidden, 2 * act_dim)
        self.act_dim = act_dim
        self.max_action = float(max_action)
        self.log_std_min, self.log_std_max = float(log_std_min), float(log_std_max)

    def forward(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        mu, log_std = self.net(obs).split(self.act_dim, dim=-1)
        return mu, log_std.clamp(self.log_std_min, self.log_std_max)

    def deterministic(self, obs: Tensor) -> Tensor:
        return self.max_action * torch.tanh(self(obs)[0])

    def sample(self, obs: Tensor, noise: Tensor) -> tuple[Tensor, Tensor]:
        """Actions and ``log pi(a|s)`` for standard-normal ``noise`` of shape ``(batch, act_dim)``
        or ``(batch, n, act_dim)`` (``n`` samples per state)."""
        mu, log_std = self(obs)
        if noise.dim() == 3:
            mu, log_std = mu.unsqueeze(1), log_std.unsqueeze(1)
        u = mu + torch.exp(log_std) * noise
        # log(1 - tanh(u)^2) = 2 (log 2 - u - softplus(-2u)), stable for large |u|
        log_det = 2.0 * (math.log(2.0) - u - nn.functional.softplus(-2.0 * u))
        log_prob = gaussian_log_prob(mu, log_std, u) - log_det.sum(-1) - self.act_dim * math.log(self.max_action)
        return self.max_action * torch.tanh(u), log_prob


class VAE(nn.Module):
    """Conditional VAE of actions given states (BCQ / A2PR): ``(s, a) -> z -> a_hat``.

    Encoder ``[s, a] -> hidden -> (mean, log_std)`` with ``log_std`` clamped to ``[-4, 15]``;
    decoder ``[s, z] -> hidden -> max_action * tanh``. The caller passes the standard-normal
    ``noise`` for ``z = mean + std * noise``, so sampling stays on the agent's generator.
    """

    def __init__(
        self, obs_dim: int, act_dim: int, latent_dim: int, max_action: float = 1.0, hidden: Sequence[int] = (750, 750)
    ):
        super().__init__()
        self.encoder = mlp(obs_dim + act_dim, hidden[:-1], hidden[-1])
        self.mean = nn.Linear(hidden[-1], latent_dim)
        self.log_std = nn.Linear(hidden[-1], latent_dim)
        self.decoder = mlp(obs_dim + latent_dim, hidden, act_dim)
        self.latent_dim = latent_dim
        self.max_action = float(max_action)

    def encode(self, obs: Tensor, act: Tensor) -> tuple[Tensor, Tensor]:
        h = torch.relu(self.encoder(torch.cat([obs, act], dim=-1)))
        return self.mean(h), self.log_std(h).clamp(-4.0, 15.0).exp()

    def decode(self, obs: Tensor, z: Tensor) -> Tensor:
        return self.max_action * torch.tanh(self.decoder(torch.cat([obs, z], dim=-1)))

    def forward(self, obs: Tensor, act: Tensor, noise: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(reconstruction, mean, std)``."""
        mean, std = self.encode(obs, act)
        return self.decode(obs, mean + std * noise), mean, std
