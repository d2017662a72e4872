"""Compiled (captured) vs eager update of TD3+BC and ASPC on this machine: compile time, updates/s, error.

    PYTHONPATH=$PWD python benchmarks/bench_capture.py [--width 256] [--batch 256] [--updates 200] \
        [--device cuda] [--seeds 8] [--out benchmarks/results/capture-gpu.json]

One thread. The eager agent and the captured one (:class:`metaconstraint.algos.ensemble.CapturedAgent`)
start from the same seed and see the same batches; the last line per algorithm is the largest
parameter difference after the timed updates (float32). ``--seeds N`` also times N vmapped seeds
(:class:`~metaconstraint.algos.ensemble.SeedEnsemble`) eager and captured. On CUDA the rates are
synchronised at the end of each timed block. Prints the machine's load average; ``--out`` writes the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch
from torch._dynamo.utils import counters

import metaconstraint as mc
from metaconstraint.algos.ensemble import CapturedAgent
from metaconstraint.batch import Batch


def batches(n: int, size: int, obs: int, act: int, seed: int = 0) -> list[Batch]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        a = torch.rand(size, act, generator=g) * 1.8 - 0.9
        out.append(Batch(torch.randn(size, obs, generator=g), a, torch.randn(size, generator=g),
                         torch.randn(size, obs, generator=g), torch.zeros(size), a, torch.ones(size)))  # fmt: skip
    return out


def rate(agent, data: list, n: int) -> float:
    """Updates per second over ``n`` updates (after the warm-up the caller did)."""
    start = time.perf_counter()
    for i in range(n):
        agent.update(data[i % len(data)])
    agent.check_finite()  # one host read: waits for the device
    return n / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--updates", type=int, default=200)
    p.add_argument("--algos", default="td3bc,aspc")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seeds", type=int, default=0, help="also time this many vmapped seeds (0: no)")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    a = p.parse_args()
    torch.set_num_threads(1)
    obs, act = 17, 6
    data = [b._replace(**{f: getattr(b, f).to(a.device) for f in Batch._fields}) for b in batches(16, a.batch, obs, act)]
    dev = torch.cuda.get_device_name(0) if a.device.startswith("cuda") else "cpu"
    results = {"load_before": os.getloadavg(), "device": dev, "torch": torch.__version__, "width": a.width, "batch": a.batch}
    for name in a.algos.split(","):
        kw = dict(actor_hidden=(a.width, a.width), critic_width=a.width, planned_steps=10**6)
        eager = mc.algos.make(name, obs, act, device=a.device, **kw)
        captured = CapturedAgent(mc.algos.make(name, obs, act, device=a.device, **kw))
        counters.clear()
        start = time.perf_counter()
        period = 2 * (10 if name == "aspc" else 1)  # policy_freq 2, alpha_every 10: every kind of update
        for i in range(period):
            captured.update(data[i % len(data)])
            eager.update(data[i % len(data)])
        compile_s = time.perf_counter() - start
        graphs = counters["stats"]["unique_graphs"]
        eager_rate = rate(eager, data, a.updates)
        captured_rate = rate(captured, data, a.updates)
        captured.sync()
        pa, pe = dict(captured.agent.actor.named_parameters()), dict(eager.actor.named_parameters())
        err = max(float((pa[k] - pe[k]).detach().abs().max()) for k in pa)
        results[name] = dict(compile_s=round(compile_s, 1), graphs=graphs, graph_breaks=sum(counters["graph_break"].values()),
                             eager_updates_per_s=round(eager_rate, 1), captured_updates_per_s=round(captured_rate, 1),
                             speedup=round(captured_rate / eager_rate, 3), max_actor_param_diff=err)  # fmt: skip
        print(name, results[name], flush=True)
        save(results, a.out)
        if a.seeds:
            from metaconstraint.algos.ensemble import SeedEnsemble

            seeds = list(range(a.seeds))
            stacked = [data[i:i + a.seeds] for i in range(0, len(data) - a.seeds + 1)]
            runs = {}
            for compiled in (False, True):
                ens = SeedEnsemble(name, seeds, obs, act, device=a.device, compile=compiled, **kw)
                start = time.perf_counter()
                for i in range(period):
                    ens.update(stacked[i % len(stacked)])
                ens.check_finite()
                warm = time.perf_counter() - start
                runs["captured" if compiled else "eager"] = (rate(ens, stacked, a.updates), warm)
            results[f"{name}-seeds{a.seeds}"] = dict(
                eager_updates_per_s=round(runs["eager"][0], 1), captured_updates_per_s=round(runs["captured"][0], 1),
                seed_updates_per_s=round(runs["captured"][0] * a.seeds, 1), compile_s=round(runs["captured"][1], 1),
                vs_one_seed_captured=round(captured_rate / runs["captured"][0], 3))  # time of N seeds / time of one
            print(f"{name} x{a.seeds} seeds", results[f"{name}-seeds{a.seeds}"], flush=True)
            save(results, a.out)
    results["load_after"] = os.getloadavg()
    print(json.dumps(results))
    save(results, a.out)


def save(results: dict, out: str | None) -> None:
    """Write what is measured so far (a run cut short by a time limit keeps its finished rows)."""
    if out:
        with open(out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
