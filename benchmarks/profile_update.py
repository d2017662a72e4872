"""Where the time of a TD3+BC / ASPC update goes: torch.profiler, by phase and by operator.

Wraps (on the agent instances only; the library is not modified) the critic step, the actor
step and ASPC's second-order step in ``torch.profiler.record_function`` labels, runs a whole
number of ASPC cycles, and prints

* per phase: total and per-call time (the labels nest: ``actor_step`` contains
  ``second_order_step``),
* the operators with the most self time.

Usage: ``python benchmarks/profile_update.py [--algo aspc] [--critic robust] [--width 256]
[--batch 256] [--k-alpha 10] [--cycles 3] [--threads 1] [--device cpu]``
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _harness as H  # noqa: E402
from metaconstraint import algos  # noqa: E402

PHASES = ("update", "critic_step", "actor_step", "second_order_step")


def _label(obj, method: str, name: str) -> None:
    fn = getattr(obj, method)

    def wrapped(*args, **kwargs):
        with record_function(name):
            return fn(*args, **kwargs)

    setattr(obj, method, wrapped)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--algo", default="aspc", choices=["aspc", "td3bc"])
    ap.add_argument("--critic", default="robust", choices=list(H.CRITICS))
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--k-alpha", type=int, default=10)
    ap.add_argument("--cycles", type=int, default=3, help="ASPC cycles (k_alpha * policy_freq updates) to profile")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--top", type=int, default=15)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    extra = {"constraint": {"every": args.k_alpha}} if args.algo == "aspc" else {}
    agent = algos.make(
        args.algo, H.OBS_DIM, H.ACT_DIM, 1.0, device=device, critic=args.critic,
        actor_hidden=(args.width, args.width), critic_width=args.width, **extra,
    )
    _label(agent, "update", "update")
    _label(agent, "_critic_step", "critic_step")
    _label(agent, "_actor_step", "actor_step")
    if hasattr(agent.constraint, "_second_order_step"):
        _label(agent.constraint, "_second_order_step", "second_order_step")
    batches = H.random_batches(8, args.batch, device, seed=5)
    n = args.cycles * args.k_alpha * agent.config.policy_freq
    for i in range(n):  # warm-up, same phase as the profiled run
        agent.update(batches[i % len(batches)])
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for i in range(n):
            agent.update(batches[i % len(batches)])
        H.sync(device)
    events = {e.key: e for e in prof.key_averages()}
    total = events["update"].cpu_time_total
    print(f"{args.algo}, {args.critic} critic, width {args.width}, batch {args.batch}, k_alpha {args.k_alpha}, "
          f"{n} updates, {args.threads} thread(s), torch {torch.__version__}, {device}")
    print(f"{'phase':<20}{'calls':>7}{'total ms':>11}{'ms/call':>10}{'share':>8}")
    for name in PHASES:
        e = events.get(name)
        if e is None:
            continue
        print(f"{name:<20}{e.count:>7}{e.cpu_time_total / 1e3:>11.1f}{e.cpu_time_total / e.count / 1e3:>10.2f}"
              f"{e.cpu_time_total / total:>8.1%}")
    print()
    ops = [e for e in prof.key_averages() if e.key not in PHASES]
    ops.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
    self_total = sum(e.self_cpu_time_total for e in ops)
    print(f"{'operator (self CPU time)':<44}{'calls':>7}{'ms':>10}{'share':>8}")
    for e in ops[: args.top]:
        print(f"{e.key[:43]:<44}{e.count:>7}{e.self_cpu_time_total / 1e3:>10.1f}{e.self_cpu_time_total / self_total:>8.1%}")


if __name__ == "__main__":
    main()
