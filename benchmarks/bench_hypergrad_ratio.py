"""Time of one unrolled(steps=1) hypergradient against one plain gradient step.

Actor-shaped problem from the ASPC spec: a 2x256 ReLU MLP policy (obs 17 -> 256 -> 256 -> 6,
tanh output), batch 256, float32, Adam lr 3e-4 with a warm state. Inner loss (actor loss with
a fixed linear stand-in for the critic) ``-softplus(rho) * mean(pi(s) @ c) + mean |pi(s) - a|^2``;
outer loss on a second batch. The plain step is ``loss.backward(); torch.optim.Adam.step()``
on the same loss at fixed rho.

Also prints the accuracy numbers of the hypergradient core (float64, small problems):
backend agreement, functional Adam vs torch.optim.Adam, and ridge closed-form errors.

Usage: ``python benchmarks/bench_hypergrad_ratio.py [--reps 30] [--threads 1] [--steps 1]``
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.func import functional_call

import metaconstraint as mc


def problem():
    """The actor-shaped problem: (actor, data, inner, outer, params, hparams, opt, warm opt_state)."""
    torch.manual_seed(0)
    actor = mc.nets.Actor(17, 6)
    s, a = torch.randn(256, 17), torch.rand(256, 6) * 2 - 1
    sv, av = torch.randn(256, 17), torch.rand(256, 6) * 2 - 1
    c = torch.randn(6)
    rho = torch.tensor(2.5).expm1().log()  # softplus(rho) = 2.5

    def pi(p, x):
        return functional_call(actor, p, (x,))

    def inner(p, h):
        act = pi(p, s)
        return -F.softplus(h["rho"]) * (act @ c).mean() + ((act - a) ** 2).mean()

    def outer(traj, h):
        act = pi(traj.params[-1], sv)
        return -(act @ c).mean() + ((act - av) ** 2).mean()

    opt = mc.optim.adam(lr=3e-4)
    params = {k: v.detach().clone() for k, v in actor.named_parameters()}
    state = opt.init(params)
    for _ in range(3):  # warm Adam state, as inside training
        params, state, _ = mc.hypergrad.step(lambda p: inner(p, {"rho": rho}), params, opt, state)
    return actor, (s, a, c, rho), inner, outer, params, {"rho": rho}, opt, state


def timing(reps: int, steps: int, backends: list[str]) -> dict[str, float]:
    actor, (s, a, c, rho), inner, outer, params, hp, opt, state = problem()
    torch_opt = torch.optim.Adam(actor.parameters(), lr=3e-4)

    def plain_step():
        torch_opt.zero_grad(set_to_none=True)
        act = actor(s)
        loss = -F.softplus(rho) * (act @ c).mean() + ((act - a) ** 2).mean()
        loss.backward()
        torch_opt.step()

    fns = {"plain": plain_step}
    for b in backends:
        fns[b] = lambda b=b: mc.hypergrad.unrolled(
            inner, outer, params, hp, opt, steps=steps, opt_state=state, backend=b
        )
    for fn in fns.values():  # warm-up
        for _ in range(3):
            fn()
    # Round-robin, so that load from other processes on a shared machine hits all alike.
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


_MEMORY_PROBE = """
import os, sys, threading, time, torch
sys.path.insert(0, {bench_dir!r})
import bench_hypergrad_ratio as b
import metaconstraint as mc
torch.set_num_threads(1)
_, _, inner, outer, p, h, opt, st = b.problem()
run = lambda: mc.hypergrad.unrolled(inner, outer, p, h, opt, steps={steps}, opt_state=st, backend={backend!r})
run()  # warm-up: lazy imports, allocator
rss = lambda: int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
base, peak, done = rss(), [0], [False]
def poll():
    while not done[0]:
        peak[0] = max(peak[0], rss())
        time.sleep(0.0005)
t = threading.Thread(target=poll); t.start(); run(); done[0] = True; t.join()
print((peak[0] - base) / 2**20)
"""


def peak_memory(backend: str, steps: int) -> float:
    """Peak growth of resident memory (MiB) while one hypergradient is computed.

    Measured in a fresh process by polling /proc/self/statm, with glibc told to return every
    block of 64 KiB or more to the OS on free (so RSS follows live tensors). Linux only.
    """
    code = _MEMORY_PROBE.format(bench_dir=str(Path(__file__).resolve().parent), steps=steps, backend=backend)
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    return float(out.stdout.strip().splitlines()[-1])


def accuracy() -> dict[str, float]:
    """The numbers the test-suite asserts, measured once (float64)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    import test_hypergrad as th  # noqa: E402
    import test_optim as to  # noqa: E402

    res: dict[str, float] = {}
    prob = th.mlp_problem()
    worst = {"higher": 0.0, "jvp": 0.0}
    for name, make in th.OPTIMIZERS.items():
        for steps in (1, 3):
            opt = make()
            ref = mc.hypergrad.unrolled(prob.inner, prob.outer, prob.params, prob.hparams, opt, steps=steps)
            for b in th.backends_with(opt)[1:]:
                hg = mc.hypergrad.unrolled(
                    prob.inner, prob.outer, prob.params, prob.hparams, opt, steps=steps, backend=b
                )
                worst[b] = max(worst[b], th.rel_err(hg, ref))
    res["agreement higher vs func (test optimizers)"] = worst["higher"]
    res["agreement jvp vs func (test optimizers)"] = worst["jvp"]
    for steps in (1, 3):  # default Adam (eps 1e-8, eps_root 1e-16) from a fresh state
        opt = mc.optim.adam(lr=1e-2)
        ref = mc.hypergrad.unrolled(prob.inner, prob.outer, prob.params, prob.hparams, opt, steps=steps)
        for b in ("higher", "jvp"):
            hg = mc.hypergrad.unrolled(prob.inner, prob.outer, prob.params, prob.hparams, opt, steps=steps, backend=b)
            res[f"agreement {b} vs func (default adam, fresh state, steps={steps})"] = th.rel_err(hg, ref)
    res["adam vs torch.optim.Adam (100 steps, eps_root=1e-16)"] = to._run_pair(
        mc.optim.adam(lr=1e-2), lambda ps: torch.optim.Adam(ps, lr=1e-2)
    )
    res["adam vs torch.optim.Adam (100 steps, eps_root=0)"] = to._run_pair(
        mc.optim.adam(lr=1e-2, eps_root=0.0), lambda ps: torch.optim.Adam(ps, lr=1e-2)
    )
    res["adam vs torch.optim.Adam (100 steps, float32)"] = to._run_pair(
        mc.optim.adam(lr=1e-3), lambda ps: torch.optim.Adam(ps, lr=1e-3), dtype=torch.float32
    )
    ridge = th.ridge_problem()
    exact = ridge.closed_form(ridge.hparams)
    w_star = ridge.optimum(ridge.hparams)

    def rel(hg):
        return float((hg.grads["lam"] - exact).abs().max() / exact.abs().max())

    res["ridge implicit cg (10 iters) vs closed form"] = rel(
        mc.hypergrad.implicit(ridge.inner, ridge.outer, w_star, ridge.hparams, method="cg", iters=10)
    )
    res["ridge implicit neumann (100 iters) vs closed form"] = rel(
        mc.hypergrad.implicit(
            ridge.inner, ridge.outer, w_star, ridge.hparams, method="neumann", iters=100, lr=1 / ridge.eig_max
        )
    )
    for b in ("func", "higher", "jvp"):
        res[f"ridge unrolled sgd 100 steps ({b}) vs closed form"] = rel(
            mc.hypergrad.unrolled(
                ridge.inner, ridge.outer, ridge.params, ridge.hparams, mc.optim.sgd(lr=1 / ridge.eig_max),
                steps=100, backend=b,
            )
        )
    res["check() on unrolled mlp (func, adam, 3 steps)"] = mc.hypergrad.check(
        lambda h: mc.hypergrad.unrolled(prob.inner, prob.outer, prob.params, h, th.OPTIMIZERS["adam"](), steps=3),
        prob.hparams,
    )
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=1)
    ap.add_argument("--backends", default="func,higher,jvp")
    ap.add_argument("--no-accuracy", action="store_true")
    ap.add_argument("--memory-steps", type=int, default=0, help="also measure peak RSS growth at this many steps")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), median of {args.reps} reps")
    t = timing(args.reps, args.steps, args.backends.split(","))
    print(f"plain step (backward + torch.optim.Adam): {t['plain'] * 1e3:8.2f} ms")
    for b, v in t.items():
        if b != "plain":
            print(f"unrolled(steps={args.steps}, backend={b!r}):{'':<8}{v * 1e3:8.2f} ms  ratio {v / t['plain']:.2f}")
    if args.memory_steps:
        for b in args.backends.split(","):
            mib = peak_memory(b, args.memory_steps)
            print(f"peak RSS growth, unrolled(steps={args.memory_steps}, backend={b!r}): {mib:7.1f} MiB")
    if not args.no_accuracy:
        for k, v in accuracy().items():
            print(f"{k}: {v:.2e}")


if __name__ == "__main__":
    main()
