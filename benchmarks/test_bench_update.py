"""Per-update cost of ASPC against TD3+BC with the same critic, network sizes and batches.

For each k_alpha in {1, 2, 5, 10, 30}, critic "robust" and "plain", every batch size and
width of the chosen size: one TD3+BC and one ASPC agent in this process, trained on the
same synthetic batches, timed in alternating *blocks* of updates. A block is a whole
number of ASPC cycles (``k_alpha * policy_freq`` updates hold exactly one second-order
step), at least ``min_block`` updates, so a block's mean per-update time includes the
hypergradient at its true frequency; a per-update median would hide it. Rounds are short
and many (at least ``updates`` updates per agent), so that load changes on a shared machine
hit both agents alike. We report the median of the per-round paired ratios ASPC/TD3+BC
(``ratio``, with quartiles), the ratio of the per-agent medians, and each agent's median
time per update.

pytest-benchmark times one round (one ASPC block plus one TD3+BC block); the numbers that
matter are in ``extra_info`` and in ``benchmarks/results/update-*.json``.
"""

from __future__ import annotations

import math

import pytest
import torch

import _harness as H
from metaconstraint import algos


def _agents(critic: str, width: int, k_alpha: int, device: torch.device, horizon: int = 1):
    common = dict(critic=critic, actor_hidden=(width, width), critic_width=width, seed=0)
    td3 = algos.make("td3bc", H.OBS_DIM, H.ACT_DIM, 1.0, device=device, **common)
    aspc = algos.make("aspc", H.OBS_DIM, H.ACT_DIM, 1.0, device=device, constraint=dict(every=k_alpha, horizon=horizon),
                       **common)
    return td3, aspc


def _block(agent, batches, n: int):
    state = {"i": 0}

    def run() -> None:
        for _ in range(n):
            agent.update(batches[state["i"] % len(batches)])
            state["i"] += 1

    return run


CASES = [(c, k, 1) for c in H.CRITICS for k in H.K_ALPHAS] + [("robust", 10, h) for h in H.HORIZONS if h > 1]


@pytest.mark.parametrize("critic,k_alpha,horizon", CASES, ids=[f"{c}-k{k}-h{h}" for c, k, h in CASES])
def test_update_cost(benchmark, recorder, device, size, critic, k_alpha, horizon, width, batch_size):
    td3, aspc = _agents(critic, width, k_alpha, device, horizon)
    cycle = k_alpha * aspc.config.policy_freq  # updates per second-order step
    n = cycle * math.ceil(size["min_block"] / cycle)
    updates, min_rounds = H.budget(size, batch_size)
    rounds = max(min_rounds, math.ceil(updates / n))  # many short rounds: robust to load
    batches = H.random_batches(8, batch_size, device, seed=1)
    alt = H.Alternating({"aspc": _block(aspc, batches, n), "td3bc": _block(td3, batches, n)}, device)
    alt.warmup(1)
    alpha_before = float(aspc.constraint.value())

    benchmark.pedantic(alt.round, rounds=rounds, iterations=1, warmup_rounds=0)

    # The measurement must have run what it claims: ASPC changed its alpha by second-order
    # steps (one per block), TD3+BC kept 2.5, and both stayed finite.
    second_order_steps = aspc.constraint.coefficient.num_updates
    assert second_order_steps == (rounds + 1) * n // cycle, second_order_steps
    assert float(aspc.constraint.value()) != alpha_before
    assert float(td3.constraint.value()) == pytest.approx(td3.config.alpha)
    assert td3.num_updates == aspc.num_updates == (rounds + 1) * n

    per_update = {k: [t / n for t in v] for k, v in alt.times.items()}
    med = {k: H.spread(v)["median"] for k, v in per_update.items()}
    paired = H.spread(alt.paired_ratios("aspc", "td3bc"))  # each ASPC block over its neighbour
    row = {
        "critic": critic,
        "k_alpha": k_alpha,
        "horizon": horizon,
        "width": width,
        "batch_size": batch_size,
        "updates_per_block": n,
        "rounds": rounds,
        "td3bc_ms": med["td3bc"] * 1e3,
        "aspc_ms": med["aspc"] * 1e3,
        "ratio": paired["median"],
        "ratio_of_medians": med["aspc"] / med["td3bc"],
        "paired_ratio": paired,
        "td3bc_ms_spread": {k: v * 1e3 if k != "n" else v for k, v in H.spread(per_update["td3bc"]).items()},
        "aspc_ms_spread": {k: v * 1e3 if k != "n" else v for k, v in H.spread(per_update["aspc"]).items()},
    }
    benchmark.extra_info.update({k: v for k, v in row.items() if not isinstance(v, dict)})
    summary = (
        f"{critic} critic, w{width} b{batch_size}, k_alpha={k_alpha}, horizon={horizon}: TD3+BC {row['td3bc_ms']:.2f} ms, "
        f"ASPC {row['aspc_ms']:.2f} ms per update, ratio {row['ratio']:.3f}"
    )
    recorder.add("update", row, summary, policy_freq=aspc.config.policy_freq, obs_dim=H.OBS_DIM, act_dim=H.ACT_DIM)
