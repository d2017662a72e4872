"""Functional, differentiable optimizers (optax / TorchOpt style).

An optimizer is a pair of pure functions::

    state = opt.init(params)
    updates, state = opt.update(grads, state, params)
    params = apply_updates(params, updates)

Parameters, gradients and updates are ``dict[str, Tensor]``. Nothing is done in place,
so when ``grads`` carry a graph (``create_graph=True``) the new parameters are a
differentiable function of whatever the gradients depend on (e.g. a constraint weight).

Conventions (shared by every hypergradient backend in :mod:`metaconstraint.hypergrad`):

* Adam uses bias correction and puts ``eps`` outside the root and ``eps_root`` inside it:
  ``u = -lr * m_hat / (sqrt(v_hat + eps_root) + eps)``. With ``eps_root = 0`` this is
  exactly ``torch.optim.Adam``; the default ``eps_root = 1e-16`` keeps the derivative of the
  root finite where ``v = 0`` (first step, dead units) and moves a non-differentiated step
  by a relative ``~eps_root / v`` only.
* Weight decay is coupled (added to the gradient), as in ``torch.optim.Adam``.
* The learning rate is a float or a schedule ``count -> lr`` evaluated at the step count
  *before* the update (count 0 on the first step), so a schedule needs no extra state.
* States are plain dicts of tensors and ints, so ``torch.save`` / ``torch.load(weights_only=True)``
  round-trip them.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple, Union

import torch
from torch import Tensor

Params = dict[str, Tensor]
State = dict[str, Any]
Schedule = Callable[[int], float]
LearningRate = Union[float, Schedule]

__all__ = [
    "GradientTransformation",
    "adam",
    "sgd",
    "apply_updates",
    "detach_state",
    "exponential_decay",
    "check_tree",
]


class GradientTransformation(NamedTuple):
    """An optimizer as two pure functions plus the hyper-parameters it was built with."""

    init: Callable[[Mapping[str, Tensor]], State]
    update: Callable[[Mapping[str, Tensor], State, Mapping[str, Tensor] | None], tuple[Params, State]]
    hyperparams: dict[str, Any]


def check_tree(reference: Mapping[str, Tensor], other: Mapping[str, Tensor], what: str) -> None:
    """Raise a readable error if ``other`` does not have the keys and shapes of ``reference``."""
    ref_keys, keys = set(reference), set(other)
    if ref_keys != keys:
        missing = sorted(ref_keys - keys)
        extra = sorted(keys - ref_keys)
        raise KeyError(f"{what}: keys do not match the parameters (missing {missing}, unexpected {extra})")
    for k, t in reference.items():
        o = other[k]
        if o is None:
            raise ValueError(f"{what}['{k}'] is None: the loss does not depend on parameter '{k}'")
        if tuple(o.shape) != tuple(t.shape):
            raise ValueError(f"{what}['{k}'] has shape {tuple(o.shape)}, expected {tuple(t.shape)}")


def _lr_at(lr: LearningRate, count: int) -> float:
    return float(lr(count)) if callable(lr) else float(lr)


def exponential_decay(init_value: float, gamma: float) -> Schedule:
    """``lr(count) = init_value * gamma ** count`` (``torch.optim.lr_scheduler.ExponentialLR``)."""
    if init_value <= 0 or not (0 < gamma <= 1):
        raise ValueError(f"exponential_decay needs init_value > 0 and 0 < gamma <= 1, got {init_value}, {gamma}")

    def schedule(count: int) -> float:
        return init_value * gamma**count

    return schedule


def adam(
    lr: LearningRate = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    eps_root: float = 1e-16,
    weight_decay: float = 0.0,
) -> GradientTransformation:
    """Adam with bias correction; differentiable through its update (see module docstring)."""
    b1, b2 = betas
    if not (0.0 <= b1 < 1.0 and 0.0 <= b2 < 1.0):
        raise ValueError(f"adam: betas must lie in [0, 1), got {betas}")
    if eps < 0 or eps_root < 0 or weight_decay < 0:
        raise ValueError("adam: eps, eps_root and weight_decay must be >= 0")

    def init(params: Mapping[str, Tensor]) -> State:
        return {
            "count": 0,
            "mu": {k: torch.zeros_like(p, memory_format=torch.preserve_format).detach() for k, p in params.items()},
            "nu": {k: torch.zeros_like(p, memory_format=torch.preserve_format).detach() for k, p in params.items()},
        }

    def update(grads: Mapping[str, Tensor], state: State, params: Mapping[str, Tensor] | None = None):
        check_tree(state["mu"], grads, "adam.update grads")
        if weight_decay:
            if params is None:
                raise ValueError("adam with weight_decay needs params in update(grads, state, params)")
            grads = {k: g + weight_decay * params[k] for k, g in grads.items()}
        count = state["count"]
        step_size = _lr_at(lr, count)
        t = count + 1
        bc1 = 1.0 - b1**t
        bc2 = 1.0 - b2**t
        mu, nu, updates = {}, {}, {}
        for k, g in grads.items():
            m = state["mu"][k] * b1 + (1.0 - b1) * g
            v = state["nu"][k] * b2 + (1.0 - b2) * (g * g)
            denom = torch.sqrt(v / bc2 + eps_root) + eps
            updates[k] = (-step_size / bc1) * m / denom
            mu[k], nu[k] = m, v
        return updates, {"count": t, "mu": mu, "nu": nu}

    return GradientTransformation(
        init, update, dict(name="adam", lr=lr, betas=betas, eps=eps, eps_root=eps_root, weight_decay=weight_decay)
    )


def sgd(lr: LearningRate = 1e-2, momentum: float = 0.0, weight_decay: float = 0.0) -> GradientTransformation:
    """SGD with optional heavy-ball momentum, matching ``torch.optim.SGD`` (dampening 0, no Nesterov)."""
    if momentum < 0 or weight_decay < 0:
        raise ValueError("sgd: momentum and weight_decay must be >= 0")

    def init(params: Mapping[str, Tensor]) -> State:
        state: State = {"count": 0}
        if momentum:
            state["trace"] = {k: torch.zeros_like(p).detach() for k, p in params.items()}
        return state

    def update(grads: Mapping[str, Tensor], state: State, params: Mapping[str, Tensor] | None = None):
        if momentum:
            check_tree(state["trace"], grads, "sgd.update grads")
        if weight_decay:
            if params is None:
                raise ValueError("sgd with weight_decay needs params in update(grads, state, params)")
            grads = {k: g + weight_decay * params[k] for k, g in grads.items()}
        count = state["count"]
        step_size = _lr_at(lr, count)
        new_state: State = {"count": count + 1}
        if momentum:
            # torch.optim.SGD starts the buffer at the first gradient, not at zero.
            trace = {
                k: (g if count == 0 else momentum * state["trace"][k] + g) for k, g in grads.items()
            }
            new_state["trace"] = trace
            direction = trace
        else:
            direction = dict(grads)
        updates = {k: -step_size * d for k, d in direction.items()}
        return updates, new_state

    return GradientTransformation(init, update, dict(name="sgd", lr=lr, momentum=momentum, weight_decay=weight_decay))


def apply_updates(params: Mapping[str, Tensor], updates: Mapping[str, Tensor]) -> Params:
    """``params + updates`` key by key, out of place (keeps the graph of both)."""
    check_tree(params, updates, "apply_updates updates")
    return {k: p + updates[k] for k, p in params.items()}


def detach_state(state: Any) -> Any:
    """A copy of an optimizer state (or any nest of dicts/lists/tensors) with every tensor detached."""
    if isinstance(state, Tensor):
        return state.detach()
    if isinstance(state, dict):
        return {k: detach_state(v) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(detach_state(v) for v in state)
    return state

