"""Constraint coefficients: a fixed number, or a learnable positive scalar with its own optimizer."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils._pytree import tree_map

from .. import optim


class FixedCoefficient:
    """A constant coefficient (TD3+BC's alpha = 2.5, ReBRAC's beta1, ...)."""

    learnable = False

    def __init__(self, value: float, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"a constraint coefficient must be a finite number >= 0, got {value}")
        self._value = torch.tensor(float(value), device=device, dtype=dtype)

    def value(self) -> Tensor:
        return self._value

    def state_dict(self) -> dict[str, Any]:
        return {"value": self._value.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._value = state["value"].to(self._value)


def inverse_softplus(x: float) -> float:
    """The rho with softplus(rho) = x (x > 0)."""
    if x <= 0:
        raise ValueError(f"softplus can only reach positive values, got {x}")
    return x + math.log(-math.expm1(-x))  # = log(exp(x) - 1), stable for large x


class AdaptiveCoefficient:
    """``coef = softplus(rho)``, trained by functional Adam with an exponentially decaying lr.

    ``lr_decay_to`` is the fraction of the starting lr reached after ``planned_updates``
    updates (ASPC: 1% over the run), i.e. ``gamma = lr_decay_to ** (1 / planned_updates)``.
    The schedule is a function of the Adam step count, so the state is just ``rho`` and the
    Adam state: nothing else to save for an exact resume.
    """

    learnable = True

    def __init__(
        self,
        init: float,
        lr: float,
        planned_updates: int | None = None,
        lr_decay_to: float = 0.01,
        betas: tuple[float, float] = (0.9, 0.999),
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ):
        if lr <= 0:
            raise ValueError(f"coefficient lr must be > 0, got {lr}")
        if planned_updates is not None and planned_updates < 1:
            raise ValueError(f"planned_updates must be >= 1, got {planned_updates}")
        gamma = 1.0 if planned_updates is None else lr_decay_to ** (1.0 / planned_updates)
        self.gamma, self.betas = gamma, tuple(betas)
        self.schedule = optim.exponential_decay(lr, gamma)
        self.opt = optim.adam(lr=self.schedule, betas=betas, eps_root=0.0)
        self.rho = torch.tensor(inverse_softplus(init), device=device, dtype=dtype, requires_grad=True)
        self.opt_state = self.opt.init({"rho": self.rho})

    def value(self) -> Tensor:
        """The coefficient as a function of ``rho`` (carries the graph to ``rho``)."""
        return F.softplus(self.rho)

    def update(self, grad_rho: Tensor, rho: Tensor, opt_state: Any) -> tuple[Tensor, Any]:
        """One Adam step on ``rho`` given d(outer loss)/d(rho), as a pure function: ``(rho, opt_state)``.

        A NaN/Inf hypergradient leaves ``rho`` and Adam's moments as they were (chosen on the device,
        no host read; the caller's finiteness guard reports it); the step count still advances.
        """
        updates, new_state = self.opt.update({"rho": grad_rho}, opt_state, {"rho": rho})
        finite = torch.isfinite(grad_rho)
        keep = lambda new, old: torch.where(finite, new, old) if isinstance(new, Tensor) else new  # noqa: E731
        return keep(rho.detach() + updates["rho"], rho.detach()), tree_map(keep, new_state, opt_state)

    def load_rho_and_state(self, rho: Tensor, opt_state: Any) -> None:
        with torch.no_grad():
            self.rho.copy_(rho)
        self.opt_state = optim.detach_state(opt_state)

    def apply_gradient(self, grad_rho: Tensor) -> None:
        """One optimizer step on ``rho`` given d(outer loss)/d(rho) (a non-finite one changes nothing)."""
        self.load_rho_and_state(*self.update(grad_rho, self.rho.detach(), self.opt_state))

    @property
    def num_updates(self) -> int:
        """Coefficient updates done so far."""
        return optim.step_count(self.opt_state)

    @property
    def lr(self) -> float:
        """The learning rate the next update will use."""
        return self.schedule(self.num_updates)

    def state_dict(self) -> dict[str, Any]:
        return {"rho": self.rho.detach().clone(), "opt_state": optim.detach_state(self.opt_state), "gamma": self.gamma}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if abs(state["gamma"] - self.gamma) > 1e-12 * max(1.0, self.gamma):
            raise ValueError(
                f"checkpoint's coefficient lr decay gamma {state['gamma']} differs from this run's {self.gamma}: "
                "the planned number of steps changed; resume with the original --steps"
            )
        with torch.no_grad():
            self.rho.copy_(state["rho"])
        self.opt_state = optim.upgrade_legacy_state(self.opt, {"rho": self.rho}, state["opt_state"])
