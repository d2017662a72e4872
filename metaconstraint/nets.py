"""Networks used by the algorithms: deterministic actor, (robust) critics, value nets.

The "robust critic" of ASPC (spec: 3x256, ReLU followed by LayerNorm after every hidden
layer, hidden weights U(+-1/sqrt(fan_in)), hidden biases 0.1, last layer U(+-3e-3)) is
``Critic(..., hidden=(256, 256, 256), layer_norm=True, robust_init=True)``; the original
TD3+BC critic is ``Critic(..., hidden=(256, 256))``. :func:`make_critic` names both. An
algorithm's twin critics are one :class:`CriticEnsemble` of two such critics.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

__all__ = [
    "mlp",
    "Actor",
    "Critic",
    "CriticEnsemble",
    "stack_member_optimizer_state",
    "stack_member_tree",
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


class CriticEnsemble(nn.Module):
    """Critics of one architecture evaluated together: their parameters stacked on a leading
    member dimension, and every layer of the forward pass one batched matrix product for all
    members (one kernel per layer instead of one per critic and layer, which matters where
    kernel launches dominate, as on a GPU). It composes with ``torch.func`` (``vmap`` over
    seeds, ``functional_call``, ``grad``) like any module.

    ``critic(obs, act)`` returns ``Q`` of shape ``(members, *batch)`` (so ``q1, q2 = critic(obs, act)``);
    :meth:`member` evaluates one member alone and :meth:`q1` the first (TD3's actor loss).
    Parameter names are the member's own (``net.0.weight``, shape ``(members, out, in)``);
    checkpoints of the former two-module layout (``q1.*``, ``q2.*``) load into it.
    """

    def __init__(self, members: Sequence[Critic]):
        super().__init__()
        if len(members) < 1:
            raise ValueError("a critic ensemble needs at least one member")
        self.size = len(members)
        self._template = (copy.deepcopy(members[0]).to("meta"),)  # a tuple: not a submodule, no parameters
        stacked = copy.deepcopy(members[0])
        per_member = [dict(m.named_parameters()) for m in members]
        for name, _ in members[0].named_parameters():
            owner, _, leaf = name.rpartition(".")
            setattr(stacked.get_submodule(owner), leaf, nn.Parameter(torch.stack([p[name].detach() for p in per_member])))
        self.net = stacked.net  # the member's layers with stacked parameters: names stay ``net.*``
        for layer in self.net:
            if not isinstance(layer, (nn.Linear, nn.LayerNorm)) and any(True for _ in layer.parameters()):
                raise TypeError(f"CriticEnsemble evaluates Linear, LayerNorm and parameter-free layers, not {layer}")

    def _call(self, params: Mapping[str, Tensor], obs: Tensor, act: Tensor) -> Tensor:
        return functional_call(self._template[0], params, (obs, act))

    def forward(self, obs: Tensor, act: Tensor, params: Mapping[str, Tensor] | None = None) -> Tensor:
        """``Q_j(s, a)`` of every member ``j``: shape ``(members, *batch)``. ``params``: stacked
        parameters to use instead of the ensemble's own (by name)."""
        p = dict(self.named_parameters()) if params is None else params
        x = torch.cat([obs, act], dim=-1)
        batch = x.shape[:-1]
        x = x.reshape(1, -1, x.shape[-1]).expand(self.size, -1, -1)
        for i, layer in enumerate(self.net):
            if isinstance(layer, nn.Linear):  # x W_j^T + b_j for every member j at once
                x = torch.baddbmm(p[f"net.{i}.bias"].unsqueeze(1), x, p[f"net.{i}.weight"].transpose(1, 2))
            elif isinstance(layer, nn.LayerNorm):
                x = F.layer_norm(x, layer.normalized_shape, eps=layer.eps)
                if layer.elementwise_affine:
                    x = x * p[f"net.{i}.weight"].unsqueeze(1) + p[f"net.{i}.bias"].unsqueeze(1)
            else:  # a parameter-free activation
                x = layer(x)
        return x.reshape(self.size, *batch)

    def member(self, j: int, obs: Tensor, act: Tensor, params: Mapping[str, Tensor] | None = None) -> Tensor:
        """``Q_j(s, a)`` of member ``j`` alone (counting from 0): shape ``(batch,)``."""
        p = dict(self.named_parameters()) if params is None else params
        return self._call({k: v[j] for k, v in p.items()}, obs, act)

    def q1(self, obs: Tensor, act: Tensor, params: Mapping[str, Tensor] | None = None) -> Tensor:
        """``Q_1(s, a)``, the first member alone (TD3's actor loss)."""
        return self.member(0, obs, act, params)

    def member_state_dict(self) -> dict[str, Tensor]:
        """The parameters per member, named as separate critics would be (``q1.net.0.weight``, ...)."""
        return {f"q{j + 1}.{k}": v[j] for k, v in self.state_dict().items() for j in range(self.size)}

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: ANN001 - torch's hook
        _stack_member_entries(state_dict, prefix, self.size)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def _stack_member_entries(state_dict: dict, prefix: str, members: int) -> None:
    """Rewrite a former two-module checkpoint (``q1.net.0.weight``, ``q2.net.0.weight``) in place
    into the stacked layout (``net.0.weight``); a stacked one is left as it is."""
    legacy = sorted(k for k in state_dict if k.startswith(prefix + "q1."))
    for key in legacy:
        name = key[len(prefix) + 3:]
        parts = [state_dict.pop(f"{prefix}q{j + 1}.{name}", None) for j in range(members)]
        if any(p is None for p in parts):
            raise KeyError(f"critic checkpoint: {prefix}q*.{name} is missing for some of the {members} critics")
        state_dict[prefix + name] = torch.stack(parts)


def stack_member_tree(tree: Any, members: int) -> Any:
    """``tree`` (nested dicts, tuples, lists: e.g. a functional optimizer state) with every dict of
    former per-critic entries (``q1.net.0.weight``, ``q2.net.0.weight``) stacked (``net.0.weight``)."""
    if members < 2:
        return tree
    if isinstance(tree, Mapping):
        out = {k: stack_member_tree(v, members) for k, v in tree.items()}
        _stack_member_entries(out, "", members)
        return out
    if isinstance(tree, (tuple, list)):
        return type(tree)(stack_member_tree(v, members) for v in tree)
    return tree


def stack_member_optimizer_state(state: dict, param_groups: Sequence[Mapping[str, Any]]) -> dict:
    """A ``torch.optim`` state dict saved over separate critics' parameters (member after member),
    rewritten for the same optimizer over :class:`CriticEnsemble`'s stacked parameters
    (``param_groups``: the optimizer's own); any other state is returned as it is."""
    if len(state.get("param_groups", ())) != 1 or len(param_groups) != 1:
        return state
    (group,), params = state["param_groups"], param_groups[0]["params"]
    saved, n = group["params"], len(params)
    if n == 0 or len(saved) == n or len(saved) % n:
        return state
    members = len(saved) // n
    if any(p.dim() == 0 or p.shape[0] != members for p in params):
        return state
    stacked = {}
    for i in range(n):
        entries = [state["state"].get(saved[j * n + i]) for j in range(members)]
        if any(e is None for e in entries):
            continue
        stacked[i] = {k: v if k == "step" else torch.stack([e[k] for e in entries]) for k, v in entries[0].items()}
    return {"state": stacked, "param_groups": [dict(group, params=list(range(n)))]}


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
