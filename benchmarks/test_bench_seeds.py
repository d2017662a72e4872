"""Several seeds in one process: N vmapped seeds against the same N seeds run one after another.

For TD3+BC and ASPC (robust critic, k_alpha = 10), N in {1, 4, 8}: a ``SeedEnsemble`` of N seeds
and N ordinary agents, trained on the same synthetic batches, timed in alternating blocks of
whole ASPC cycles (as the update suite does). Reported: seed-updates per second of each and
their ratio (vmapped / sequential; > 1 means the vmapped ensemble does more seed-updates per
second). Target on CPU (issue 19): >= 1.2x at N = 4 on one thread.
"""

from __future__ import annotations

import math

import pytest

import _harness as H
from metaconstraint import algos
from metaconstraint.algos.ensemble import SeedEnsemble

SEED_COUNTS = (1, 4, 8)


@pytest.mark.parametrize("n", SEED_COUNTS, ids=[f"n{n}" for n in SEED_COUNTS])
@pytest.mark.parametrize("name", ("td3bc", "aspc"))
def test_seeds_throughput(benchmark, recorder, device, size, name, n, width, batch_size):
    common = dict(critic="robust", actor_hidden=(width, width), critic_width=width)
    if name == "aspc":
        common["constraint"] = {"every": 10}
    seeds = list(range(n))
    ensemble = SeedEnsemble(name, seeds, H.OBS_DIM, H.ACT_DIM, 1.0, device=device, **common)
    agents = [algos.make(name, H.OBS_DIM, H.ACT_DIM, 1.0, device=device, seed=s, **common) for s in seeds]
    batches = H.random_batches(8, batch_size, device, seed=1)
    cycle = 10 * 2  # updates per ASPC alpha update (k_alpha x policy_freq)
    block = cycle * math.ceil(size["min_block"] / cycle)
    state = {"i": 0, "j": 0}

    def vmapped() -> None:
        for _ in range(block):
            ensemble.update([batches[(state["i"] + s) % 8] for s in seeds])
            state["i"] += 1

    def sequential() -> None:
        for _ in range(block):
            for s, agent in enumerate(agents):
                agent.update(batches[(state["j"] + s) % 8])
            state["j"] += 1

    alt = H.Alternating({"vmapped": vmapped, "sequential": sequential}, device)
    alt.warmup(1)
    rounds = max(3, size["rounds"])
    benchmark.pedantic(alt.round, rounds=rounds, iterations=1, warmup_rounds=0)
    ensemble.check_finite()

    per = {k: H.spread([t / (block * n) for t in v])["median"] for k, v in alt.times.items()}
    ratio = H.spread(alt.paired_ratios("sequential", "vmapped"))
    row = {
        "algo": name, "seeds": n, "width": width, "batch_size": batch_size, "block": block, "rounds": rounds,
        "vmapped_seed_updates_per_s": 1.0 / per["vmapped"], "sequential_seed_updates_per_s": 1.0 / per["sequential"],
        "ratio": ratio["median"], "ratio_spread": ratio,
    }  # fmt: skip
    benchmark.extra_info.update({k: v for k, v in row.items() if not isinstance(v, dict)})
    summary = (
        f"{name} w{width} b{batch_size} N={n}: vmapped {row['vmapped_seed_updates_per_s']:.1f} seed-updates/s, "
        f"sequential {row['sequential_seed_updates_per_s']:.1f}, ratio {row['ratio']:.2f}"
    )
    recorder.add("seeds", row, summary)
