"""The external peer of issue 9: d3rlpy's TD3PlusBC on the suite's datasets, evaluated by our evaluator.

The same budget and sizes as the suite's runs (steps, batch 256, 2 hidden layers of WIDTH for the
actor and both critics, alpha 2.5, standardised observations, actions scaled from the env's bounds
to d3rlpy's [-1, 1], gamma 0.99, tau 0.005, target noise
0.2 clipped at 0.5, actor every 2 critic steps). The data go through d3rlpy's own dataset and
replay buffer; evaluation uses `metaconstraint.evaluation.evaluate` with the same episode count
and start-state seed as `metaconstraint train` (1_000_000 + seed), so scores are comparable run by
run. The run directory holds what `metaconstraint report` reads: config.yaml, metrics.csv and
summary.json.

    python experiments/d3rlpy_peer.py --dataset metaconstraint/hopper/medium-v0 --seed 0 \
        --run-dir experiments/runs/d3rlpy-td3plusbc/d3rlpy-td3plusbc-hopper-medium-s0

d3rlpy is the optional extra `bench` (see benchmarks/README.md for the install line).
"""

from __future__ import annotations

import argparse
import csv
import json
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import yaml

from metaconstraint import data
from metaconstraint.evaluation import evaluate, normalized_score

ALGO = "d3rlpy-td3plusbc"


def to_mdp_dataset(d3rlpy, t: data.Transitions):
    """Our transitions as a d3rlpy MDPDataset (episodes are contiguous; each ends in a terminal or a timeout)."""
    ends = np.zeros(len(t), dtype=bool)
    ends[:-1] = t.episode_starts[1:]
    ends[-1] = True
    terminals = t.terminals.astype(bool)
    return d3rlpy.dataset.MDPDataset(
        observations=t.observations,
        actions=t.actions,
        rewards=t.rewards.astype(np.float32),
        terminals=terminals.astype(np.float32),
        timeouts=(ends & ~terminals).astype(np.float32),
        action_space=d3rlpy.constants.ActionSpace.CONTINUOUS,
    )


def make_agent(d3rlpy, width: int, batch_size: int, seed: int, action_low: np.ndarray, action_high: np.ndarray):
    """d3rlpy's policy is tanh in [-1, 1]: the action scaler maps the env's bounds onto it (as our
    agents' max_action does), else Pendulum's torques in [-2, 2] would be out of reach."""
    d3rlpy.seed(seed)
    enc = d3rlpy.models.encoders.VectorEncoderFactory(hidden_units=[width, width])
    cfg = d3rlpy.algos.TD3PlusBCConfig(
        batch_size=batch_size, actor_learning_rate=3e-4, critic_learning_rate=3e-4,
        actor_encoder_factory=enc, critic_encoder_factory=enc, gamma=0.99, tau=0.005,
        target_smoothing_sigma=0.2, target_smoothing_clip=0.5, alpha=2.5, update_actor_interval=2,
        n_critics=2, observation_scaler=d3rlpy.preprocessing.StandardObservationScaler(),
        action_scaler=d3rlpy.preprocessing.MinMaxActionScaler(minimum=action_low, maximum=action_high),
    )
    return cfg.create(device="cpu:0")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=8000)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--eval-every", type=int, default=2000)
    p.add_argument("--eval-episodes", type=int, default=10)
    p.add_argument("--run-dir", required=True, type=Path)
    a = p.parse_args(argv)
    if a.steps % a.eval_every:
        p.error("--steps must be a multiple of --eval-every")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # d3rlpy imports gym, which prints an "unmaintained" notice
        import d3rlpy
    torch.set_num_threads(1)
    t = data.load(a.dataset)
    a.run_dir.mkdir(parents=True, exist_ok=False)
    config = {"algo": ALGO, "dataset": a.dataset, "seed": a.seed, "steps": a.steps, "batch_size": a.batch_size,
              "eval_every": a.eval_every, "eval_episodes": a.eval_episodes, "tag": "", "d3rlpy": d3rlpy.__version__,
              "agent": {"alpha": 2.5, "actor_hidden": [a.width, a.width], "critic_width": a.width}}
    (a.run_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    space = t.action_space
    agent = make_agent(d3rlpy, a.width, a.batch_size, a.seed, np.asarray(space.low, np.float32),
                       np.asarray(space.high, np.float32))
    t0, evals = time.perf_counter(), []
    for _, _metrics in agent.fitter(to_mdp_dataset(d3rlpy, t), n_steps=a.steps, n_steps_per_epoch=a.eval_every,
                                    logger_adapter=d3rlpy.logging.NoopAdapterFactory(), show_progress=False,
                                    save_interval=10**9):
        r = evaluate(lambda obs: agent.predict(np.asarray(obs, np.float32)), t, episodes=a.eval_episodes,
                     seed=1_000_000 + a.seed)
        evals.append({"step": (len(evals) + 1) * a.eval_every, "score": float(r["score_mean"]),
                      "score_std": float(r["score_std"]), "return": float(r["return_mean"]),
                      "return_std": float(r["return_std"])})
        print(json.dumps(evals[-1]), flush=True)
    wall = time.perf_counter() - t0
    with open(a.run_dir / "metrics.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", "eval_score", "eval_return"])
        w.writerows([e["step"], e["score"], e["return"]] for e in evals)
    data_return = float(t.episode_returns().mean())
    summary = {"status": "finished", "algo": ALGO, "dataset": a.dataset, "seed": a.seed, "steps": a.steps,
               "step": a.steps, "final_score": evals[-1]["score"], "final_return": evals[-1]["return"],
               "dataset_score": float(normalized_score(t, data_return)), "coefficient": "alpha",
               "coef_start": 2.5, "coef_min": 2.5, "coef_max": 2.5, "coef_end": 2.5, "wall_s": round(wall, 2),
               "evals": evals}
    (a.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps({k: summary[k] for k in ("status", "step", "final_score", "wall_s")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
