"""Functional, differentiable optimizers built from small transforms (optax / TorchOpt style).

An optimizer is a pair of pure functions::

    state = opt.init(params)
    updates, state = opt.update(grads, state, params)
    params = apply_updates(params, updates)

Parameters, gradients and updates are ``dict[str, Tensor]``. Nothing is done in place, so
when the gradients depend on something (a constraint weight, a learning rate) the new
parameters are a differentiable function of it, under ``torch.autograd`` and ``torch.func``
alike.

Optimizers are chains of transforms: ``adam = chain(add_decayed_weights(wd),
scale_by_adam(b1, b2, eps, eps_root), scale_by_learning_rate(lr))`` and ``sgd =
chain(add_decayed_weights(wd), trace(momentum), scale_by_learning_rate(lr))``. Every
hyper-parameter may be a Python number or a tensor; a tensor that requires grad (or that a
``torch.func`` transform tracks) makes the step differentiable in it. This is optax's
``inject_hyperparams`` idea without the wrapper: build the optimizer from the tensors, e.g.
``hypergrad.unrolled(..., opt=lambda h: optim.adam(lr=h["lr"]))``.

Conventions (every hypergradient backend in :mod:`metaconstraint.hypergrad` follows them):

* Adam uses bias correction and puts ``eps`` outside the root and ``eps_root`` inside it:
  ``u = -lr * m_hat / (sqrt(v_hat + eps_root) + eps)``. With ``eps_root = 0`` this is
  ``torch.optim.Adam``; the default ``eps_root = 1e-16`` keeps the derivative of the root
  finite where ``v = 0`` (first step, dead units).
* Weight decay is coupled (added to the gradient), as in ``torch.optim.Adam`` / ``SGD``.
* A learning rate is a number, a tensor or a schedule ``count -> lr`` evaluated at the step
  count *before* the update (count 0 on the first step).
* States are nests of tuples, dicts, tensors and ints, so ``torch.save`` /
  ``torch.load(weights_only=True)`` round-trip them.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple, Optional, Union

import torch
from torch import Tensor

Params = dict[str, Tensor]
State = Any  # a nest of tuples / dicts / tensors / ints
Scalar = Union[float, Tensor]
Schedule = Callable[[int], Scalar]
LearningRate = Union[Scalar, Schedule]

__all__ = [
    "GradientTransformation",
    "TorchEquivalent",
    "adam",
    "sgd",
    "chain",
    "scale_by_adam",
    "trace",
    "add_decayed_weights",
    "scale_by_learning_rate",
    "apply_updates",
    "detach_state",
    "exponential_decay",
    "check_tree",
    "check_state",
    "step_count",
    "upgrade_legacy_state",
]


class TorchEquivalent(NamedTuple):
    """The same optimizer as a ``torch.optim`` one, for the ``higher`` hypergradient backend.

    ``build(torch_params, names, state)`` makes the optimizer with ``state`` loaded;
    ``overrides(count)`` gives the per-step hyper-parameters (``higher``'s ``override``);
    ``read_state(per_param_states, names, count)`` turns ``higher``'s state back into ours.
    """

    build: Callable[[list[Tensor], list[str], State], torch.optim.Optimizer]
    overrides: Callable[[int], dict[str, list]]
    read_state: Callable[[list[dict], list[str], int], State]


class GradientTransformation(NamedTuple):
    """An optimizer (or a piece of one) as two pure functions.

    ``torch_equivalent`` is set by :func:`adam` and :func:`sgd` only; other chains run on the
    ``func`` and ``jvp`` hypergradient backends.
    """

    init: Callable[[Mapping[str, Tensor]], State]
    update: Callable[[Mapping[str, Tensor], State, Optional[Mapping[str, Tensor]]], tuple[Params, State]]
    torch_equivalent: Optional[TorchEquivalent] = None


# ----------------------------------------------------------------------------- trees


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


def check_state(expected: State, state: State, what: str = "opt_state") -> None:
    """Raise a readable error if ``state`` is not shaped like ``expected`` (e.g. ``opt.init(params)``)."""
    if isinstance(expected, Tensor):
        if not isinstance(state, Tensor):
            raise TypeError(f"{what} must be a Tensor, got {type(state).__name__}")
        if tuple(state.shape) != tuple(expected.shape):
            raise ValueError(f"{what} has shape {tuple(state.shape)}, expected {tuple(expected.shape)}")
    elif isinstance(expected, Mapping):
        if not isinstance(state, Mapping):
            raise TypeError(f"{what} must be a dict, got {type(state).__name__}")
        if set(expected) != set(state):
            missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
            raise KeyError(f"{what}: keys do not match (missing {missing}, unexpected {extra})")
        for k in expected:
            check_state(expected[k], state[k], f"{what}['{k}']")
    elif isinstance(expected, (tuple, list)):
        if not isinstance(state, (tuple, list)) or len(state) != len(expected):
            raise TypeError(
                f"{what} must be a sequence of {len(expected)} states (one per transform of the chain), "
                f"got {type(state).__name__}"
            )
        for i, (e, s) in enumerate(zip(expected, state)):
            check_state(e, s, f"{what}[{i}]")


def detach_state(state: Any) -> Any:
    """A copy of an optimizer state (or any nest of dicts/lists/tuples/tensors) with every tensor detached."""
    if isinstance(state, Tensor):
        return state.detach()
    if isinstance(state, dict):
        return {k: detach_state(v) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(detach_state(v) for v in state)
    return state


def apply_updates(params: Mapping[str, Tensor], updates: Mapping[str, Tensor]) -> Params:
    """``params + updates`` key by key, out of place (keeps the graph of both)."""
    check_tree(params, updates, "apply_updates updates")
    return {k: p + updates[k] for k, p in params.items()}


def _zeros_like(params: Mapping[str, Tensor]) -> Params:
    return {k: torch.zeros_like(p, memory_format=torch.preserve_format).detach() for k, p in params.items()}


def _value_at(x: LearningRate, count: int) -> Scalar:
    if isinstance(x, Tensor):
        return x
    return x(count) if callable(x) else float(x)


def _check_nonnegative(name: str, value: Scalar, what: str) -> None:
    if not isinstance(value, Tensor) and not value >= 0:
        raise ValueError(f"{what}: {name} must be >= 0, got {value}")


# ----------------------------------------------------------------------------- transforms


def scale_by_adam(
    b1: Scalar = 0.9, b2: Scalar = 0.999, eps: Scalar = 1e-8, eps_root: Scalar = 1e-16
) -> GradientTransformation:
    """Adam's direction ``m_hat / (sqrt(v_hat + eps_root) + eps)``; state ``{count, mu, nu}``."""
    for name, b in (("b1", b1), ("b2", b2)):
        if not isinstance(b, Tensor) and not 0.0 <= b < 1.0:
            raise ValueError(f"adam: betas must lie in [0, 1), got {name}={b}")
    _check_nonnegative("eps", eps, "adam")
    _check_nonnegative("eps_root", eps_root, "adam")

    def init(params: Mapping[str, Tensor]) -> State:
        return {"count": 0, "mu": _zeros_like(params), "nu": _zeros_like(params)}

    def update(grads: Mapping[str, Tensor], state: State, params: Optional[Mapping[str, Tensor]] = None):
        check_tree(state["mu"], grads, "adam.update grads")
        t = state["count"] + 1
        bc1, bc2 = 1.0 - b1**t, 1.0 - b2**t
        mu, nu, out = {}, {}, {}
        for k, g in grads.items():
            m = state["mu"][k] * b1 + (1.0 - b1) * g
            v = state["nu"][k] * b2 + (1.0 - b2) * (g * g)
            out[k] = (m / bc1) / (torch.sqrt(v / bc2 + eps_root) + eps)
            mu[k], nu[k] = m, v
        return out, {"count": t, "mu": mu, "nu": nu}

    return GradientTransformation(init, update)


def trace(decay: Scalar) -> GradientTransformation:
    """Heavy-ball momentum ``t <- decay * t + g`` from ``t = 0`` (``torch.optim.SGD``, dampening 0)."""
    _check_nonnegative("momentum", decay, "trace")

    def init(params: Mapping[str, Tensor]) -> State:
        return {"trace": _zeros_like(params)}

    def update(grads: Mapping[str, Tensor], state: State, params: Optional[Mapping[str, Tensor]] = None):
        check_tree(state["trace"], grads, "trace.update grads")
        new = {k: g + decay * state["trace"][k] for k, g in grads.items()}
        return new, {"trace": new}

    return GradientTransformation(init, update)


def add_decayed_weights(weight_decay: Scalar) -> GradientTransformation:
    """``g + weight_decay * p`` (coupled weight decay); stateless."""
    _check_nonnegative("weight_decay", weight_decay, "add_decayed_weights")

    def init(params: Mapping[str, Tensor]) -> State:
        return {}

    def update(grads: Mapping[str, Tensor], state: State, params: Optional[Mapping[str, Tensor]] = None):
        if not isinstance(weight_decay, Tensor) and weight_decay == 0:
            return dict(grads), state
        if params is None:
            raise ValueError("weight decay needs params in update(grads, state, params)")
        return {k: g + weight_decay * params[k] for k, g in grads.items()}, state

    return GradientTransformation(init, update)


def scale_by_learning_rate(lr: LearningRate) -> GradientTransformation:
    """``-lr * u``; a schedule is evaluated at the count before the update. State ``{count}``."""
    if not callable(lr):
        _check_nonnegative("lr", lr, "scale_by_learning_rate")

    def init(params: Mapping[str, Tensor]) -> State:
        return {"count": 0}

    def update(updates: Mapping[str, Tensor], state: State, params: Optional[Mapping[str, Tensor]] = None):
        step = _value_at(lr, state["count"])
        return {k: -step * u for k, u in updates.items()}, {"count": state["count"] + 1}

    return GradientTransformation(init, update)


def chain(*transforms: GradientTransformation) -> GradientTransformation:
    """Apply ``transforms`` in order; the state is the tuple of their states."""

    def init(params: Mapping[str, Tensor]) -> State:
        return tuple(t.init(params) for t in transforms)

    def update(grads: Mapping[str, Tensor], state: State, params: Optional[Mapping[str, Tensor]] = None):
        if not isinstance(state, tuple) or len(state) != len(transforms):
            raise TypeError(
                f"chain.update: the state must be the tuple of {len(transforms)} transform states that init() makes"
            )
        new_state = []
        for t, s in zip(transforms, state):
            grads, s = t.update(grads, s, params)
            new_state.append(s)
        return dict(grads), tuple(new_state)

    return GradientTransformation(init, update)


# ----------------------------------------------------------------------------- optimizers


def exponential_decay(init_value: float, gamma: float) -> Schedule:
    """``lr(count) = init_value * gamma ** count`` (``torch.optim.lr_scheduler.ExponentialLR``)."""
    if init_value <= 0 or not (0 < gamma <= 1):
        raise ValueError(f"exponential_decay needs init_value > 0 and 0 < gamma <= 1, got {init_value}, {gamma}")

    def schedule(count: int) -> float:
        return init_value * gamma**count

    return schedule


def _float(x: Scalar) -> float:
    return float(x.detach()) if isinstance(x, Tensor) else float(x)


def step_count(state: State) -> int:
    """How many updates a chain's state has seen: the count of its last transform that keeps one."""
    for s in reversed(state if isinstance(state, tuple) else (state,)):
        if isinstance(s, Mapping) and "count" in s:
            return int(s["count"])
    raise ValueError("this optimizer state keeps no step count (no scale_by_adam / scale_by_learning_rate in the chain)")


def adam(
    lr: LearningRate = 1e-3,
    betas: tuple[Scalar, Scalar] = (0.9, 0.999),
    eps: Scalar = 1e-8,
    eps_root: Scalar = 1e-16,
    weight_decay: Scalar = 0.0,
) -> GradientTransformation:
    """Adam with bias correction and coupled weight decay; differentiable through its update."""
    b1, b2 = betas
    opt = chain(add_decayed_weights(weight_decay), scale_by_adam(b1, b2, eps, eps_root), scale_by_learning_rate(lr))

    def build(torch_params: list[Tensor], names: list[str], state: State) -> torch.optim.Optimizer:
        count = step_count(state)
        topt = torch.optim.Adam(torch_params, lr=0.0, betas=(_float(b1), _float(b2)), eps=_float(eps))
        for p, n in zip(torch_params, names):
            topt.state[p] = {"step": count, "exp_avg": state[1]["mu"][n].detach().clone(),
                             "exp_avg_sq": state[1]["nu"][n].detach().clone()}  # fmt: skip
        return topt

    def overrides(count: int) -> dict[str, list]:
        # higher adds eps to sqrt(v); we add it to sqrt(v_hat): rescale it to make the steps equal.
        t = count + 1
        return {"lr": [_value_at(lr, count)], "betas": [(b1, b2)], "weight_decay": [weight_decay],
                "eps": [eps * (1.0 - b2**t) ** 0.5]}  # fmt: skip

    def read_state(per_param: list[dict], names: list[str], count: int) -> State:
        mu = {n: s["exp_avg"] for n, s in zip(names, per_param)}
        nu = {n: s["exp_avg_sq"] for n, s in zip(names, per_param)}
        return ({}, {"count": count, "mu": mu, "nu": nu}, {"count": count})

    return opt._replace(torch_equivalent=TorchEquivalent(build, overrides, read_state))


def sgd(lr: LearningRate = 1e-2, momentum: Scalar = 0.0, weight_decay: Scalar = 0.0) -> GradientTransformation:
    """SGD with optional heavy-ball momentum, matching ``torch.optim.SGD`` (dampening 0, no Nesterov)."""
    parts = [add_decayed_weights(weight_decay)]
    if isinstance(momentum, Tensor) or momentum:
        parts.append(trace(momentum))
    opt = chain(*parts, scale_by_learning_rate(lr))
    has_trace = len(parts) == 2

    def build(torch_params: list[Tensor], names: list[str], state: State) -> torch.optim.Optimizer:
        topt = torch.optim.SGD(torch_params, lr=0.0, momentum=_float(momentum) if has_trace else 0.0)
        if has_trace and step_count(state) > 0:
            for p, n in zip(torch_params, names):
                topt.state[p] = {"momentum_buffer": state[1]["trace"][n].detach().clone()}
        return topt

    def overrides(count: int) -> dict[str, list]:
        return {"lr": [_value_at(lr, count)], "weight_decay": [weight_decay], "momentum": [momentum]}

    def read_state(per_param: list[dict], names: list[str], count: int) -> State:
        middle = ({"trace": {n: s["momentum_buffer"] for n, s in zip(names, per_param)}},) if has_trace else ()
        return ({}, *middle, {"count": count})

    return opt._replace(torch_equivalent=TorchEquivalent(build, overrides, read_state))


def upgrade_legacy_state(opt: GradientTransformation, params: Mapping[str, Tensor], saved: State) -> State:
    """A state saved before optimizers were chains (``{count, mu, nu}`` / ``{count, trace}``) in today's form.

    Returns ``saved`` unchanged when it already is a chain state; checks the result against
    ``opt.init(params)`` either way.
    """
    expected = opt.init(params)
    state = saved
    if isinstance(saved, Mapping) and "count" in saved:
        count = int(saved["count"])
        inner = [{}]
        if "mu" in saved:
            inner.append({"count": count, "mu": saved["mu"], "nu": saved["nu"]})
        elif len(expected) == 3:  # sgd with momentum
            inner.append({"trace": saved.get("trace", _zeros_like(params))})
        state = (*inner, {"count": count})
    check_state(expected, state)
    return state
