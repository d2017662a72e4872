"""Hypergradient backends on ASPC's own problem: time and peak memory.

The problem is the actor step of ASPC: actor params (2 hidden layers of ``width``), the
agent's critic and actor loss on one batch, its functional Adam with a warm state, and the
hyper-parameter ``rho`` with alpha = softplus(rho). Inner loss ``L(theta; softplus(rho))``,
outer loss ``L1 = L(theta_k; alpha)`` at the current alpha as a constant (ASPC's L1 term).

Methods (``steps`` = inner steps differentiated, 1..5):

* ``first_order``   -- ``steps`` ordinary actor steps (autograd + functional Adam): what
                       TD3+BC does; the floor every hypergradient is compared with.
* ``func``          -- ``hypergrad.unrolled(backend="func")``: reverse-over-reverse with plain
                       ``torch.autograd.grad(create_graph=True)`` on parameter dicts.
* ``higher``        -- ``hypergrad.unrolled(backend="higher")`` (the ``higher`` library).
* ``jvp``           -- ``hypergrad.unrolled(backend="jvp")``: forward-over-reverse.
* ``torch.func``    -- the same unrolled hypergradient written with nested ``torch.func.grad``
                       transforms (defined here, as a reference point for the composable API).
* ``aspc_step``     -- ``AdaptiveConstraint.hypergradient`` (steps=1), the path ASPC trains with.
* ``affine_step``   -- the same steps=1 hypergradient from first-order passes only, exact
                       because the actor loss is affine in alpha and Adam is elementwise
                       (``Problem.affine_step``; a proposal for the constraint module).
* ``implicit_cg`` / ``implicit_neumann`` -- ``hypergrad.implicit`` with a fixed number of
                       Hessian-vector products (``IMPLICIT_ITERS``; ``tol=0`` so CG runs them all).

Each method is timed alternating with one ``first_order`` step (so ``ratio_to_step`` is robust
to load), then its peak memory is measured on one more call. Every unrolled result is checked
against ``func`` (same steps) to float32 accuracy, so a broken backend fails the run.
"""

from __future__ import annotations

import functools
import gc
import json
import os
import sys
from pathlib import Path
from typing import Callable

import pytest
import torch
import torch.nn.functional as F

import _harness as H
from metaconstraint import algos, hypergrad, optim
from metaconstraint.constraint import first_order_step

STEPS = (1, 2, 3, 4, 5)
UNROLLED = ("func", "higher", "jvp")
IMPLICIT_ITERS = 10
# The actor loss is not convex and the params are not an inner optimum, so the Hessian is
# indefinite: before timing, the damping is raised (x10 from 1) until CG sees positive
# curvature for IMPLICIT_ITERS iterations, and the Neumann step is cut (/10 from 1e-2)
# until its series stays finite. Timing does not depend on these values, only on the
# number of Hessian-vector products; they are recorded in the results.
DAMPINGS = (1.0, 10.0, 100.0, 1e3, 1e4)
NEUMANN_LRS = (1e-2, 1e-3, 1e-4, 1e-5)
AGREE_RTOL = 2e-3  # float32, a few hundred thousand parameters


class Problem:
    """ASPC's actor step as an (inner, outer) pair, built from a warmed-up agent."""

    def __init__(self, width: int, batch_size: int, device: torch.device):
        # constraint.terms="L1" so the in-agent hypergradient has the same outer loss as the others.
        self.agent = algos.make(
            "aspc", H.OBS_DIM, H.ACT_DIM, 1.0, device=device, actor_hidden=(width, width),
            critic_width=width, constraint=dict(every=1, terms="L1"), seed=0,
        )
        batches = H.random_batches(4, batch_size, device, seed=2)
        for i in range(6):  # a warm Adam state and a trained-for-a-moment critic
            self.agent.update(batches[i % len(batches)])
        self.batch = batches[0]
        self.objective = self.agent.actor_objective(self.batch)
        self.params = {k: v.detach().clone() for k, v in self.agent._actor_params().items()}
        self.opt = self.agent.actor_opt
        self.opt_state = optim.detach_state(self.agent.actor_opt_state)
        self.constraint = self.agent.constraint
        self.alpha = self.constraint.value().detach().clone()
        self.hparams = {"rho": self.constraint.coefficient.rho.detach().clone()}
        self.device = device

    def inner(self, p, h):
        return self.objective(p, F.softplus(h["rho"])).loss

    def outer(self, traj, h):
        return self.objective(traj.params[-1], self.alpha).loss

    def num_params(self) -> int:
        return sum(v.numel() for v in self.params.values())

    # -- the methods -------------------------------------------------------------------
    def first_order(self, steps: int) -> None:
        p, s = self.params, self.opt_state
        for _ in range(steps):
            p = {k: v.detach().requires_grad_() for k, v in p.items()}
            p, s, _ = first_order_step(self.objective, p, self.opt, s, self.alpha)

    def unrolled(self, backend: str, steps: int) -> torch.Tensor:
        with torch.no_grad():  # as the constraint calls it: no plain-autograd graph to the critic
            hg = hypergrad.unrolled(
                self.inner, self.outer, self.params, self.hparams, self.opt, steps=steps,
                opt_state=self.opt_state, backend=backend,
            )
        return hg.grads["rho"]

    def aspc_step(self, horizon: int) -> torch.Tensor:
        """The agent's coefficient step (lookahead of ``horizon`` actor steps plus the rho update)."""
        leaves = {k: v.detach().requires_grad_() for k, v in self.params.items()}  # as the agent's Parameters
        self.constraint.config.horizon = horizon
        _, result = self.constraint.coefficient_step(self.objective, leaves, self.opt, self.opt_state, self.constraint.state)
        return result.logs["hypergrad"]

    def affine_step(self) -> torch.Tensor:
        """The steps=1 hypergradient with first-order passes only (a proposal for ASPC).

        Exact when the inner loss is affine in the coefficient, ``L = c A(theta) + B(theta)``
        (every loss the constraint module accepts), and the optimizer acts elementwise (Adam,
        SGD): then ``d grad/d c = grad A`` and ``d theta~/d c = J_update(g) grad A`` where
        ``J_update`` is the optimizer's *diagonal* Jacobian in the gradient, so
        ``d outer/d rho = <grad outer(theta~), J_update(g) grad A> * sigmoid(rho)``. Costs one
        forward and two backward passes at theta, one backward pass through the elementwise
        optimizer update (no network), and one forward and backward at theta~: no ``create_graph``.
        """
        rho = self.hparams["rho"]
        coef = F.softplus(rho).detach().requires_grad_()
        theta = {k: v.detach().requires_grad_() for k, v in self.params.items()}
        names = list(theta)
        loss = self.objective(theta, coef).loss
        (a,) = torch.autograd.grad(loss, [coef], create_graph=True)  # = A(theta), one mul node back
        g = dict(zip(names, torch.autograd.grad(loss, [theta[k] for k in names], retain_graph=True)))
        g_a = dict(zip(names, torch.autograd.grad(a, [theta[k] for k in names])))
        params = {k: v.detach() for k, v in theta.items()}
        g = {k: v.detach().requires_grad_() for k, v in g.items()}
        updates, _ = self.opt.update(g, self.opt_state, params)
        # The update is elementwise in g, so its Jacobian is diagonal: diag = d(sum u)/d g.
        diag = torch.autograd.grad(sum(u.sum() for u in updates.values()), [g[k] for k in names])
        u_dot = {k: d * g_a[k] for k, d in zip(names, diag)}
        updates = {k: u.detach() for k, u in updates.items()}
        stepped = {k: (params[k] + updates[k]).requires_grad_() for k in names}
        outer = self.objective(stepped, self.alpha).loss  # L1 at theta~, as self.outer reads it
        g_out = torch.autograd.grad(outer, [stepped[k] for k in names])
        d_coef = sum((go * u_dot[k]).sum() for go, k in zip(g_out, names))
        return d_coef * torch.sigmoid(rho)

    def implicit(self, method: str, damping: float, lr: float) -> torch.Tensor:
        hg = hypergrad.implicit(
            self.inner, self.outer, self.params, self.hparams, method=method, iters=IMPLICIT_ITERS,
            damping=damping, lr=lr, tol=0.0,
        )
        return hg.grads["rho"]

    @functools.cached_property
    def implicit_settings(self) -> dict[str, float]:
        """The smallest damping (and largest Neumann step) that the solvers accept here."""
        for damping in DAMPINGS:
            try:
                self.implicit("cg", damping, 1.0)
            except ValueError:
                continue
            for lr in NEUMANN_LRS:
                try:
                    self.implicit("neumann", damping, lr)
                except ValueError:
                    continue
                return {"damping": damping, "lr": lr}
        raise AssertionError(f"no damping in {DAMPINGS} / Neumann step in {NEUMANN_LRS} works for this problem")


@functools.lru_cache(maxsize=4)
def _problem(width: int, batch_size: int, device: torch.device) -> Problem:
    return Problem(width, batch_size, device)


@functools.lru_cache(maxsize=64)
def _reference(width: int, batch_size: int, device: torch.device, steps: int) -> float:
    return float(_problem(width, batch_size, device).unrolled("func", steps))


def _method(prob: Problem, method: str, steps: int, value: dict[str, torch.Tensor]) -> Callable[[], None]:
    """The call to time for ``method``; hypergradients land in ``value["g"]``."""

    def run() -> None:
        if method == "first_order":
            prob.first_order(steps)
        elif method == "aspc_step":
            value["g"] = prob.aspc_step(steps)
        elif method == "affine_step":
            value["g"] = prob.affine_step()
        elif method.startswith("implicit_"):
            value["g"] = prob.implicit(method.removeprefix("implicit_"), **prob.implicit_settings)
        else:
            value["g"] = prob.unrolled(method, steps)

    return run


CASES = (
    [("first_order", s) for s in STEPS]
    + [(b, s) for b in UNROLLED for s in STEPS]
    + [("aspc_step", s) for s in (*STEPS, 10)]
    + [("affine_step", 1), ("implicit_cg", IMPLICIT_ITERS), ("implicit_neumann", IMPLICIT_ITERS)]
)


@pytest.mark.parametrize("method,steps", CASES, ids=[f"{m}-{s}" for m, s in CASES])
def test_hypergrad_cost(benchmark, recorder, device, size, width, hg_batch_size, method, steps):
    batch_size = hg_batch_size
    prob = _problem(width, batch_size, device)
    if method == "higher":
        pytest.importorskip("higher", reason="the 'higher' backend needs the higher package (a dependency)")
    value: dict[str, torch.Tensor] = {}
    run = _method(prob, method, steps, value)

    alt = H.Alternating({"method": run, "step": lambda: prob.first_order(1)}, device)
    alt.warmup(2)
    rounds = 2 * size["rounds"]
    benchmark.pedantic(alt.round, rounds=rounds, iterations=1, warmup_rounds=0)
    if device.type == "cuda":
        peak, how = H.cuda_peak_memory(run, device), H.CUDA_MEMORY_METHOD
        peak_step = H.cuda_peak_memory(lambda: prob.first_order(1), device)
    else:
        how = H.CPU_MEMORY_METHOD
        peaks = _cpu_peaks(width, batch_size)
        peak, peak_step = peaks.get(f"{method}-{steps}"), peaks.get("first_order-1")

    agreement = None
    if method in UNROLLED or method in ("aspc_step", "affine_step"):
        got, ref = float(value["g"]), _reference(width, batch_size, device, steps)
        agreement = abs(got - ref) / max(abs(ref), 1e-12)
        assert agreement < AGREE_RTOL, f"{method} steps={steps}: {got} vs func {ref}"
    elif method.startswith("implicit_"):
        assert torch.isfinite(value["g"]).all()

    t = H.spread(alt.times["method"])
    row = {
        "method": method,
        "steps": steps,
        "width": width,
        "batch_size": batch_size,
        "actor_params": prob.num_params(),
        "ms": t["median"] * 1e3,
        "ms_q1": t["q1"] * 1e3,
        "ms_q3": t["q3"] * 1e3,
        "step_ms": H.spread(alt.times["step"])["median"] * 1e3,
        "ratio_to_step": H.spread(alt.paired_ratios("method", "step"))["median"],
        "peak_mib": None if peak is None else peak / 2**20,
        "step_peak_mib": None if peak_step is None else peak_step / 2**20,
        "rel_diff_to_func": agreement,
        "rounds": rounds,
        "implicit_settings": prob.implicit_settings if method.startswith("implicit_") else None,
    }
    benchmark.extra_info.update({k: v for k, v in row.items() if not isinstance(v, dict)})
    mem = "n/a" if row["peak_mib"] is None else f"{row['peak_mib']:.2f} MiB"
    summary = (
        f"w{width} b{batch_size} {method} steps={steps}: {row['ms']:.2f} ms "
        f"(x{row['ratio_to_step']:.2f} a first-order step), peak {mem}"
    )
    recorder.add("hypergrad", row, summary, memory=how, implicit_iters=IMPLICIT_ITERS, agree_rtol=AGREE_RTOL)


@functools.lru_cache(maxsize=4)
def _cpu_peaks(width: int, batch_size: int) -> dict[str, int | None]:
    """Peak RSS growth of every case, from one fresh probe process (see ``_harness``)."""
    return H.cpu_peak_memory_probe(Path(__file__), [str(width), str(batch_size)]) or {}


def _memory_probe(argv: list[str]) -> None:
    """``python test_bench_hypergrad.py WIDTH BATCH``: print {case: peak RSS growth} as JSON.

    Started by the suite as a fresh process with ``_harness.PROBE_ENV``. Every case is run
    twice first (as in the timed runs: lazy init, the implicit settings search), then once
    measured; with that allocator setting its freed tensors leave the resident set, so the
    cases do not see each other's memory.
    """
    width, batch_size = int(argv[0]), int(argv[1])
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    prob = Problem(width, batch_size, torch.device("cpu"))
    peaks: dict[str, int | None] = {}
    for method, steps in CASES:
        run = _method(prob, method, steps, {})
        run()
        run()
        gc.collect()
        peaks[f"{method}-{steps}"] = H.rss_peak(run)
    print(json.dumps(peaks))


if __name__ == "__main__":
    _memory_probe(sys.argv[1:])
