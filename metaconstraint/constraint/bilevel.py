"""The bilevel constraint step, independent of any particular algorithm.

An algorithm hands over an *objective*: a function ``objective(params, coef) -> Terms``
evaluated on the current batch, where ``params`` are the parameters the coefficient acts
on (the actor for TD3+BC/ReBRAC, the critic for CQL, ...). From one forward pass it
returns

* ``loss``       -- the algorithm's own loss ``L(params; coef)`` (e.g. ``coef * L_RL + L_BC``),
* ``value``      -- a scalar the step is meant to raise (e.g. mean ``Q1(s, pi(s))``); the
                    outer term L2 penalises its change ``dQ``,
* ``constraint`` -- the per-sample constraint (e.g. ``mean_dims (pi(s) - a)^2``), shape
                    ``(batch,)``; L3 uses its supremum ``B`` and the supremum of its change ``dB``.

The inner step is one functional-optimizer step ``p~ = p + update(grad_p L(p; coef))``.
Every ``every``-th inner step is built with ``create_graph=True`` so that ``p~`` is a
differentiable function of ``coef``; the outer loss

    L1 = L(p~; coef.detach())
    L2 = dQ^2              dQ: "ema" (reference code) or "step" (paper text)
    L3 = L2.detach() * B * dB

is then differentiated to ``rho`` (``coef = softplus(rho)``) only. The other inner steps
are plain first-order steps with the same optimizer and state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, NamedTuple

import torch
from torch import Tensor

from .. import optim
from .coefficient import AdaptiveCoefficient, FixedCoefficient

OUTER_TERMS = ("L1", "L2", "L3")
TERM_SETS = ("L1", "L1+L2", "L1+L3", "L1+L2+L3")
DELTA_Q = ("ema", "step")


class Terms(NamedTuple):
    """What an objective returns from one forward pass (see module docstring)."""

    loss: Tensor
    value: Tensor
    constraint: Tensor


Objective = Callable[[Mapping[str, Tensor], Tensor], Terms]


class StepResult(NamedTuple):
    params: dict[str, Tensor]  # detached, after the step
    opt_state: dict[str, Any]  # detached
    logs: dict[str, Tensor]  # detached 0-dim tensors


def parse_terms(terms: str) -> tuple[str, ...]:
    """``"L1+L2+L3"`` -> ``("L1", "L2", "L3")``, with a readable error for anything else."""
    if terms not in TERM_SETS:
        raise ValueError(f"outer loss terms '{terms}' not understood; choose one of {', '.join(TERM_SETS)}")
    return tuple(terms.split("+"))


def _grad(loss: Tensor, params: Mapping[str, Tensor], create_graph: bool) -> dict[str, Tensor]:
    if loss.dim() != 0:
        raise ValueError(f"the objective's loss must be a scalar, got shape {tuple(loss.shape)}")
    names = list(params)
    grads = torch.autograd.grad(loss, [params[k] for k in names], create_graph=create_graph, allow_unused=True)
    out = {}
    for k, g in zip(names, grads):
        out[k] = torch.zeros_like(params[k]) if g is None else g
    return out


def first_order_step(
    objective: Objective,
    params: Mapping[str, Tensor],
    opt: optim.GradientTransformation,
    opt_state: dict[str, Any],
    coef: Tensor,
) -> tuple[StepResult, Terms]:
    """One ordinary optimizer step on ``L(params; coef)`` (no graph kept)."""
    terms = objective(params, coef.detach())
    grads = _grad(terms.loss, params, create_graph=False)
    with torch.no_grad():
        updates, new_state = opt.update(grads, opt_state, params)
        new_params = optim.apply_updates({k: p.detach() for k, p in params.items()}, updates)
    logs = {"loss": terms.loss.detach(), "value": terms.value.detach(), "constraint": terms.constraint.detach().mean()}
    return StepResult(new_params, new_state, logs), terms


class FixedConstraint:
    """A constant coefficient: every step is first order. TD3+BC's actor step."""

    def __init__(self, coefficient: FixedCoefficient):
        self.coefficient = coefficient

    def value(self) -> Tensor:
        return self.coefficient.value()

    def step(
        self, objective: Objective, params: Mapping[str, Tensor], opt: optim.GradientTransformation, opt_state: dict
    ) -> StepResult:
        result, _ = first_order_step(objective, params, opt, opt_state, self.coefficient.value())
        result.logs["coef"] = self.coefficient.value().detach()
        return result

    def state_dict(self) -> dict[str, Any]:
        return {"coefficient": self.coefficient.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.coefficient.load_state_dict(state["coefficient"])


@dataclass
class AdaptiveConstraintConfig:
    """Settings of the bilevel coefficient update (defaults: ASPC's single configuration)."""

    init: float = 2.5  # starting coefficient (softplus(rho_0))
    lr: float = 2e-3  # coefficient Adam lr at every=10; scaled by every/10 (spec)
    every: int = 10  # k_alpha: inner steps per coefficient update
    terms: str = "L1+L2+L3"  # outer loss: L1 | L1+L2 | L1+L3 | L1+L2+L3
    delta_q: str = "ema"  # "ema" (reference code) or "step" (paper text)
    ema_decay: float = 0.995  # beta of the Q EMA for delta_q="ema"
    lr_decay_to: float = 0.01  # lr fraction reached after the planned number of updates

    def validate(self) -> None:
        parse_terms(self.terms)
        if self.delta_q not in DELTA_Q:
            raise ValueError(f"delta_q must be one of {DELTA_Q}, got '{self.delta_q}'")
        if self.every < 1:
            raise ValueError(f"every (k_alpha) must be >= 1, got {self.every}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must lie in [0, 1), got {self.ema_decay}")
        if not 0.0 < self.lr_decay_to <= 1.0:
            raise ValueError(f"lr_decay_to must lie in (0, 1], got {self.lr_decay_to}")


class AdaptiveConstraint:
    """A learnable coefficient trained by the bilevel (second-order) update."""

    def __init__(
        self,
        config: AdaptiveConstraintConfig,
        planned_inner_steps: int | None = None,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ):
        config.validate()
        self.config = config
        self.terms = parse_terms(config.terms)
        planned_updates = None if planned_inner_steps is None else max(1, planned_inner_steps // config.every)
        self.coefficient = AdaptiveCoefficient(
            init=config.init,
            lr=config.lr * config.every / 10.0,
            planned_updates=planned_updates,
            lr_decay_to=config.lr_decay_to,
            device=device,
            dtype=dtype,
        )
        self.inner_steps = 0
        self.q_ema = torch.zeros((), device=device, dtype=dtype)  # the reference code starts the EMA at 0

    def value(self) -> Tensor:
        return self.coefficient.value().detach()

    def updates_coefficient_next(self) -> bool:
        """Whether the next inner step is followed by a coefficient update."""
        return (self.inner_steps + 1) % self.config.every == 0

    def step(
        self, objective: Objective, params: Mapping[str, Tensor], opt: optim.GradientTransformation, opt_state: dict
    ) -> StepResult:
        """One inner step; every ``every``-th one also updates the coefficient."""
        second_order = self.updates_coefficient_next()
        self.inner_steps += 1
        if not second_order:
            result, _ = first_order_step(objective, params, opt, opt_state, self.coefficient.value())
            result.logs["coef"] = self.value()
            return result
        return self._second_order_step(objective, params, opt, opt_state)

    def outer_loss(self, before: Terms, after: Terms) -> tuple[Tensor, dict[str, Tensor], Tensor]:
        """The outer loss from the terms before and after the (differentiable) inner step.

        Returns ``(loss, logs, new_q_ema)``; the caller commits ``new_q_ema`` after the update.
        """
        c = self.config
        if c.delta_q == "ema":
            new_q_ema = (1.0 - c.ema_decay) * after.value + c.ema_decay * self.q_ema
            delta_q = new_q_ema - self.q_ema
        else:
            new_q_ema = self.q_ema
            delta_q = after.value - before.value.detach()
        bc_before = before.constraint.detach()
        l1 = after.loss
        l2 = delta_q.pow(2)
        sup_b = bc_before.max()
        delta_b = (bc_before - after.constraint).abs().max()
        l3 = l2.detach() * sup_b * delta_b
        parts = {"L1": l1, "L2": l2, "L3": l3}
        loss = sum(parts[t] for t in self.terms)
        logs = {
            "L1": l1.detach(),
            "L2": l2.detach(),
            "L3": l3.detach(),
            "delta_q": delta_q.detach(),
            "B": sup_b,
            "delta_B": delta_b.detach(),
        }
        return loss, logs, new_q_ema.detach()

    def hypergradient(
        self,
        objective: Objective,
        params: Mapping[str, Tensor],
        opt: optim.GradientTransformation,
        opt_state: dict,
        outer_coef: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, dict[str, Tensor], dict, dict[str, Tensor], Tensor]:
        """The differentiable inner step and d(outer)/d(rho), without changing any state.

        The coefficient enters L1 only as a constant (``outer_coef``, default: its current
        value), so the gradient reaches rho through the stepped parameters alone.
        Returns ``(outer_loss, grad_rho, stepped_params, new_opt_state, logs, new_q_ema)``.
        """
        coef = self.coefficient.value()  # graph to rho
        before = objective(params, coef)
        grads = _grad(before.loss, params, create_graph=True)
        updates, new_state = opt.update(grads, opt_state, params)
        stepped = optim.apply_updates(params, updates)  # a differentiable function of coef
        after = objective(stepped, coef.detach() if outer_coef is None else outer_coef.detach())
        outer, logs, new_q_ema = self.outer_loss(before, after)
        (grad_rho,) = torch.autograd.grad(outer, [self.coefficient.rho], allow_unused=True)
        if grad_rho is None:
            raise RuntimeError(
                "the outer loss does not depend on the coefficient: the objective's loss must use `coef` "
                "so that the stepped parameters depend on it"
            )
        logs.update(
            loss=before.loss.detach(),
            value=before.value.detach(),
            constraint=before.constraint.detach().mean(),
            outer_loss=outer.detach(),
            hypergrad=grad_rho.detach(),
        )
        return outer.detach(), grad_rho, stepped, new_state, logs, new_q_ema

    def _second_order_step(
        self, objective: Objective, params: Mapping[str, Tensor], opt: optim.GradientTransformation, opt_state: dict
    ) -> StepResult:
        _, grad_rho, stepped, new_state, logs, new_q_ema = self.hypergradient(objective, params, opt, opt_state)
        self.coefficient.apply_gradient(grad_rho)
        self.q_ema = new_q_ema
        logs["coef"] = self.value()
        new_params = {k: v.detach() for k, v in stepped.items()}
        return StepResult(new_params, optim.detach_state(new_state), logs)

    def state_dict(self) -> dict[str, Any]:
        return {
            "coefficient": self.coefficient.state_dict(),
            "inner_steps": self.inner_steps,
            "q_ema": self.q_ema.clone(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.coefficient.load_state_dict(state["coefficient"])
        self.inner_steps = int(state["inner_steps"])
        self.q_ema = state["q_ema"].to(self.q_ema)
