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

__all__ = ["mlp", "Actor", "Critic", "TwinCritic", "ValueNet", "make_critic", "params_of", "CRITIC_PRESETS"]


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
