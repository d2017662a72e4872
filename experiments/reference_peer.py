"""Issue 14's peer: the ASPC authors' own code (``algorithms/offline/aspc.py`` of github.com/Colin-Jing/ASPC) trained
on our datasets, to compare its alpha trajectories with ours on the same data and settings.

The authors' file is NOT part of this repository: fetch it yourself and pass its path.

    git clone https://github.com/Colin-Jing/ASPC /work/peer/ASPC
    pip install --no-deps --target /work/peer/site torchopt==0.7.3 optree graphviz   # torchopt and its imports
    PYTHONPATH=/work/peer/site python experiments/reference_peer.py \
        --reference-file /work/peer/ASPC/algorithms/offline/aspc.py \
        --dataset metaconstraint/pendulum/expert-v0 --seed 0 --width 64 --alpha-lr 0.25 \
        --run-dir experiments/runs/alpha_study_peer/aspc-reference-pendulum-expert-s0

What the harness does and nothing more:
- stubs the file's imports that are only used by its own ``train()`` (d4rl, gym, wandb, pyrallis), so the module loads
  without them; its ``train()`` is never called;
- uses only its classes and helpers: ``compute_mean_std`` / ``normalize_states`` (states standardised, std + 1e-3),
  ``ReplayBuffer`` (its own numpy-seeded sampling), ``Actor``, ``Critic`` (3 hidden layers, ReLU + LayerNorm, its
  initialisation), ``Vnet`` (built because the constructor asks for it; unused), ``Adaptive_TD3_BC`` with its
  defaults (alpha0 2.5, k_pi 2, k_alpha 10, EMA 0.995, loss L1+L2+L3), ``set_seed``, and
  ``torchopt.adam(lr=3e-4, use_accelerated_op=True)`` as its ``train()`` builds it;
- sets the attribute the file reads but never sets: ``reward_mean`` (the dataset's mean reward; ``--reward-mean zero``
  for 0.0, i.e. no centring);
- three settings of ours applied to its objects, so a run matches `metaconstraint train` at the same settings:
  ``--width`` (its Actor's hidden layers, built as its own ``nn.Sequential`` at that width, and its Critic's
  ``hidden_dim``; 256 = its own size), ``--alpha-lr`` (its alpha Adam's lr is ``alpha_lr * k_alpha / 10``; its own is
  2e-3) and ``--alpha-decay-steps`` (its exponential lr decay reaches 1 % after that many gradient steps; its own
  constant is 1e6 whatever the run length; default: the run's ``--steps``, as ours);
- evaluates with `metaconstraint.evaluation.evaluate` (same episodes and start-state seed 1,000,000 + seed as `train`).

The run directory holds config.yaml, metrics.csv (alpha every --log-every steps, evaluations) and summary.json, the
files `metaconstraint report` reads (algo ``aspc-reference``). No checkpoints: a run is started over if cut short.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import math
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch
import yaml

ALGO = "aspc-reference"


def _stub(name: str, **attrs) -> types.ModuleType:
    mod = types.ModuleType(name)
    mod.__dict__.update(attrs)
    mod.__stub__ = True
    return mod


def load_reference(path: Path) -> types.ModuleType:
    """The authors' module, with d4rl/gym/wandb/pyrallis replaced by empty stand-ins while it is imported (its
    annotations name gym.Env and its train() is decorated by pyrallis.wrap(); nothing else of them is used here)."""
    if not path.is_file():
        raise SystemExit(f"reference_peer: --reference-file {path} does not exist (fetch github.com/Colin-Jing/ASPC)")
    stubs = {
        "d4rl": _stub("d4rl"),
        "gym": _stub("gym", Env=object, wrappers=_stub("gym.wrappers")),
        "wandb": _stub("wandb"),
        "pyrallis": _stub("pyrallis", wrap=lambda *a, **k: (lambda fn: fn), dump=lambda *a, **k: None),
    }
    saved = {k: sys.modules.get(k) for k in stubs}
    sys.modules.update(stubs)
    try:
        spec = importlib.util.spec_from_file_location("aspc_reference", path)
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
        except ModuleNotFoundError as err:
            raise SystemExit(f"reference_peer: the reference file needs '{err.name}': install torchopt==0.7.3 (and "
                             "optree, graphviz), e.g. into a folder on PYTHONPATH (see this file's docstring)") from None
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
    for name in ("Actor", "Critic", "Vnet", "ReplayBuffer", "Adaptive_TD3_BC", "compute_mean_std", "normalize_states",
                 "set_seed"):
        if not hasattr(module, name):
            raise SystemExit(f"reference_peer: {path} has no '{name}': not the authors' algorithms/offline/aspc.py?")
    return module


def accelerated_op_status() -> str:
    """Whether torchopt's compiled Adam kernel loads here, or its pure-Python version of the same op runs."""
    import torchopt

    try:
        import torchopt._C  # noqa: F401

        return f"torchopt {torchopt.__version__}: compiled accelerated Adam op"
    except ImportError as err:
        return (f"torchopt {torchopt.__version__}: compiled op unavailable ({str(err).splitlines()[0][:80]}...); "
                "torchopt's pure-Python accelerated_op/_src implementation runs")


def build(ref: types.ModuleType, t, width: int, seed: int, alpha_lr: float, decay_steps: int, reward_mean: str):
    """The authors' agent and replay buffer on our transitions, as their train() builds them."""
    import torch.nn as nn
    import torchopt

    arrays = {"observations": np.asarray(t.observations, np.float32), "actions": np.asarray(t.actions, np.float32),
              "rewards": np.asarray(t.rewards, np.float32), "next_observations": np.asarray(t.next_observations, np.float32),
              "terminals": np.asarray(t.terminals, np.float32)}
    mean, std = ref.compute_mean_std(arrays["observations"], eps=1e-3)
    arrays["observations"] = ref.normalize_states(arrays["observations"], mean, std)
    arrays["next_observations"] = ref.normalize_states(arrays["next_observations"], mean, std)
    state_dim, action_dim = arrays["observations"].shape[1], arrays["actions"].shape[1]
    buffer = ref.ReplayBuffer(state_dim, action_dim, len(arrays["rewards"]), "cpu")
    buffer.load_d4rl_dataset(arrays)
    max_action = float(np.asarray(t.action_space.high).reshape(-1)[0])
    ref.set_seed(seed, None)
    actor = ref.Actor(state_dim, action_dim, max_action)
    if width != 256:  # its Actor hard-codes 256: the same layers at our width
        actor.net = nn.Sequential(nn.Linear(state_dim, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                                  nn.Linear(width, action_dim), nn.Tanh())
    critic_1, critic_2 = ref.Critic(state_dim, action_dim, hidden_dim=width), ref.Critic(state_dim, action_dim, hidden_dim=width)
    vnet = ref.Vnet(state_dim)
    trainer = ref.Adaptive_TD3_BC(
        max_action=max_action, actor=actor, actor_optimizer=torchopt.adam(lr=3e-4, use_accelerated_op=True),
        critic_1=critic_1, critic_1_optimizer=torch.optim.Adam(critic_1.parameters(), lr=3e-4),
        critic_2=critic_2, critic_2_optimizer=torch.optim.Adam(critic_2.parameters(), lr=3e-4),
        vnet=vnet, vnet_optimizer=torch.optim.Adam(vnet.parameters(), lr=3e-4),
        discount=0.99, tau=0.005, policy_noise=0.2 * max_action, noise_clip=0.5 * max_action, policy_freq=2,
        alpha=2.5, alpha_freq=10, ema_alpha=0.995, loss_function=4, device="cpu", action_dim=action_dim)
    trainer.reward_mean = float(arrays["rewards"].mean()) if reward_mean == "data" else 0.0  # the missing attribute
    for group in trainer.alpha_optimizer.param_groups:
        group["lr"] = alpha_lr * trainer.alpha_freq / 10
    trainer.alpha_scheduler.gamma = 0.01 ** (1 / int(decay_steps / (trainer.policy_freq * trainer.alpha_freq)))
    return trainer, buffer, (mean, std)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reference-file", required=True, type=Path, help="the authors' algorithms/offline/aspc.py")
    p.add_argument("--dataset", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=8000)
    p.add_argument("--width", type=int, default=64, help="actor and critic hidden width (256: the authors' own)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--alpha-lr", type=float, default=2e-3, help="alpha's Adam lr at k_alpha = 10 (2e-3: the spec)")
    p.add_argument("--alpha-decay-steps", type=int, default=None, help="steps over which alpha's lr decays to 1%% "
                   "(default: --steps, as ours; the authors' file: 1000000)")
    p.add_argument("--reward-mean", choices=["data", "zero"], default="data")
    p.add_argument("--eval-every", type=int, default=2000)
    p.add_argument("--eval-episodes", type=int, default=10)
    p.add_argument("--log-every", type=int, default=100)
    p.add_argument("--run-dir", required=True, type=Path)
    a = p.parse_args(argv)
    if a.steps % a.eval_every or a.steps % a.log_every:
        p.error("--steps must be a multiple of --eval-every and --log-every")
    if a.run_dir.exists():
        p.error(f"--run-dir {a.run_dir} exists; remove it to run again")
    from metaconstraint import data
    from metaconstraint.evaluation import evaluate, normalized_score

    torch.set_num_threads(1)
    ref = load_reference(a.reference_file)
    status = accelerated_op_status()
    t = data.load(a.dataset)
    decay = a.alpha_decay_steps or a.steps
    trainer, buffer, (mean, std) = build(ref, t, a.width, a.seed, a.alpha_lr, decay, a.reward_mean)
    a.run_dir.mkdir(parents=True)
    config = {"algo": ALGO, "dataset": a.dataset, "seed": a.seed, "steps": a.steps, "batch_size": a.batch_size,
              "eval_every": a.eval_every, "eval_episodes": a.eval_episodes, "tag": "",
              "reference_file": str(a.reference_file), "torchopt": status,
              "agent": {"alpha": 2.5, "alpha_lr": a.alpha_lr, "alpha_decay_steps": decay, "reward_mean": a.reward_mean,
                        "actor_hidden": [a.width, a.width], "critic_width": a.width}}
    (a.run_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    print(status, flush=True)

    def policy(obs):
        with torch.no_grad():
            s = torch.as_tensor((np.asarray(obs, np.float32) - mean) / std, dtype=torch.float32)
            return trainer.actor(s.reshape(-1, s.shape[-1])).numpy().reshape(np.shape(obs)[:-1] + (-1,))

    rows, evals, alphas, last = [], [], [], {}
    t0 = time.perf_counter()
    for step in range(1, a.steps + 1):
        batch = buffer.sample(a.batch_size)
        out = trainer.train(batch)
        last.update({k: float(v) for k, v in out.items()})
        alpha = float(torch.nn.functional.softplus(trainer.alpha.detach()))
        if not math.isfinite(alpha):
            print(f"reference_peer: alpha is {alpha} at step {step}", file=sys.stderr)
            break
        if step % a.log_every == 0:
            alphas.append(alpha)
            row = {"step": step, "alpha": alpha, "q_mean": last.get("q", math.nan)}
            if step % a.eval_every == 0:
                r = evaluate(policy, t, episodes=a.eval_episodes, seed=1_000_000 + a.seed)
                e = {"step": step, "score": float(r["score_mean"]), "score_std": float(r["score_std"]),
                     "return": float(r["return_mean"]), "return_std": float(r["return_std"])}
                evals.append(e)
                row.update(eval_score=e["score"], eval_return=e["return"])
                print(json.dumps({**e, "alpha": alpha}), flush=True)
            rows.append(row)
    wall = time.perf_counter() - t0
    keys = ["step", "alpha", "q_mean", "eval_score", "eval_return"]
    with open(a.run_dir / "metrics.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys, restval="")
        w.writeheader()
        w.writerows(rows)
    finished = len(rows) == a.steps // a.log_every and bool(evals)
    data_return = float(t.episode_returns().mean())
    summary = {"status": "finished" if finished else "diverged", "algo": ALGO, "dataset": a.dataset, "seed": a.seed,
               "steps": a.steps, "step": rows[-1]["step"] if rows else 0,
               "final_score": evals[-1]["score"] if evals else None, "final_return": evals[-1]["return"] if evals else None,
               "dataset_score": float(normalized_score(t, data_return)), "coefficient": "alpha", "coef_start": 2.5,
               "coef_min": min([2.5, *alphas]), "coef_max": max([2.5, *alphas]), "coef_end": alphas[-1] if alphas else None,
               "wall_s": round(wall, 2), "evals": evals}
    (a.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps({k: summary[k] for k in ("status", "step", "final_score", "coef_end", "wall_s")}))
    return 0 if finished else 1


if __name__ == "__main__":
    raise SystemExit(main())
