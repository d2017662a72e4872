"""How ``collect`` makes its TD3 behaviours: online TD3 giving policies of graded quality (the D4RL recipe).

One training run gives every behaviour an env's dataset suite needs:

* ``expert``: the evaluation snapshot with the best return (training runs to a step budget,
  or stops early once ``stop_return`` is reached);
* ``medium``: a snapshot taken no later than the expert one whose normalised score
  ``(R - R_random) / (R_expert - R_random)`` lies in ``medium_band`` (default 1/3 to 1/2,
  i.e. "a third to a half of expert return", measured from the random return so that
  negative-return tasks like Pendulum work too; ``reference`` replaces the two returns);
  candidates are tried closest to ``medium_target`` first and re-evaluated over
  ``confirm_episodes`` episodes; if none confirms inside the band, the closest is used;
* ``medium-replay``: the replay buffer up to the medium snapshot's step (saved with every
  episode's reset seed, so it can be re-executed through ``minari.DataCollector``).

Everything lands in a run directory keyed by the env, seed and configuration, so a second
``collect`` of the same suite reuses it instead of retraining.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import gymnasium as gym
import numpy as np
import torch

from ..algos.base import soft_update
from ..nets import Actor, Critic
from .policies import ActorPolicy, Policy, RandomPolicy, from_unit_box, load_policy, save_policy, to_unit_box


@dataclass
class TD3Config:
    """TD3 (Fujimoto et al. 2018) settings; sizes are small enough for 2 CPU cores."""

    total_steps: int = 100_000  # step budget
    start_steps: int = 5_000  # uniform random actions before learning starts
    hidden: tuple[int, ...] = (128, 128)
    batch_size: int = 256
    lr: float = 3e-4
    gamma: float = 0.99
    tau: float = 0.005
    expl_noise: float = 0.1  # std of the Gaussian exploration noise, in [-1, 1] action units
    policy_noise: float = 0.2
    noise_clip: float = 0.5
    policy_freq: int = 2
    eval_every: int = 5_000  # env steps between evaluation snapshots
    eval_episodes: int = 5
    confirm_episodes: int = 20  # re-evaluation of medium candidates
    stop_return: float | None = None  # stop early once an evaluation reaches this mean return
    medium_band: tuple[float, float] = (1 / 3, 1 / 2)
    medium_target: float = 0.4  # preferred normalised score inside the band
    # returns that score 0 and 1 when choosing the medium snapshot; default: the measured random and
    # expert returns. Give e.g. D4RL's (-20.272305, 3234.3) when the step budget cannot reach a full expert.
    reference: tuple[float, float] | None = None

    def key(self) -> str:
        """Short hash of the settings that change the trained policies."""
        d = dataclasses.asdict(self)
        if d["reference"] is None:  # settings added later leave the keys of older runs unchanged
            del d["reference"]
        return hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:8]


@dataclass
class Snapshot:
    step: int
    wall_s: float
    eval_return: float
    actor: dict[str, torch.Tensor] = field(repr=False)


def rollout_returns(env_id: str, policy: Policy, episodes: int, seed: int, env_kwargs: dict | None = None) -> np.ndarray:
    """Undiscounted returns of ``policy`` over ``episodes`` episodes; episode ``i`` resets with ``seed + i``."""
    env = gym.make(env_id, **(env_kwargs or {}))
    out = np.empty(episodes, dtype=np.float64)
    try:
        for i in range(episodes):
            obs, _ = env.reset(seed=seed + i)
            total, done = 0.0, False
            while not done:
                action = policy(np.asarray(obs, dtype=np.float32)[None])[0]
                obs, r, term, trunc, _ = env.step(action)
                total += float(r)
                done = term or trunc
            out[i] = total
    finally:
        env.close()
    return out


def random_return(env_id: str, episodes: int, seed: int) -> float:
    """Mean return of the uniform random policy (``ref_min_score``)."""
    space = gym.make(env_id).action_space
    return float(rollout_returns(env_id, RandomPolicy(space.low, space.high, seed), episodes, seed).mean())


class _ReplayBuffer:
    """Numpy ring-free buffer (it never overwrites: the budget sets its size)."""

    def __init__(self, capacity: int, obs_dim: int, act_dim: int):
        self.obs = np.zeros((capacity, obs_dim), np.float32)
        self.next_obs = np.zeros((capacity, obs_dim), np.float32)
        self.act = np.zeros((capacity, act_dim), np.float32)  # environment units
        self.act_unit = np.zeros((capacity, act_dim), np.float32)  # [-1, 1] units, for learning
        self.rew = np.zeros(capacity, np.float32)
        self.term = np.zeros(capacity, bool)
        self.trunc = np.zeros(capacity, bool)
        self.n = 0

    def add(self, o, a, au, r, o2, term, trunc) -> None:
        i = self.n
        self.obs[i], self.act[i], self.act_unit[i], self.rew[i], self.next_obs[i] = o, a, au, r, o2
        self.term[i], self.trunc[i] = term, trunc
        self.n += 1


def _adam(params, lr: float) -> torch.optim.Optimizer:
    """Adam, fused where this torch build supports it (about 1.3x faster per update on CPU)."""
    params = list(params)
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(params, lr=lr)


class TD3Trainer:
    """Online TD3 on one Gymnasium env, taking evaluation snapshots of the actor."""

    def __init__(self, env_id: str, config: TD3Config, seed: int = 0, progress: bool = True):
        self.env_id, self.cfg, self.seed, self.progress = env_id, config, seed, progress
        self.env = gym.make(env_id)
        space = self.env.action_space
        if not isinstance(space, gym.spaces.Box):
            raise ValueError(f"TD3 needs a continuous (Box) action space; {env_id} has {space}")
        if not isinstance(self.env.observation_space, gym.spaces.Box):
            raise ValueError(f"TD3 here needs a Box observation space; {env_id} has {self.env.observation_space}")
        self.low, self.high = space.low.astype(np.float32), space.high.astype(np.float32)
        self.obs_dim = int(np.prod(self.env.observation_space.shape))
        self.act_dim = int(np.prod(space.shape))
        torch.manual_seed(seed)
        h = tuple(config.hidden)
        self.actor = Actor(self.obs_dim, self.act_dim, 1.0, hidden=h)
        self.q1, self.q2 = Critic(self.obs_dim, self.act_dim, h), Critic(self.obs_dim, self.act_dim, h)
        self.actor_t, self.q1_t, self.q2_t = (copy.deepcopy(m) for m in (self.actor, self.q1, self.q2))
        for m in (self.actor_t, self.q1_t, self.q2_t):
            m.requires_grad_(False)
        self.actor_opt = _adam(self.actor.parameters(), config.lr)
        self.critic_opt = _adam([*self.q1.parameters(), *self.q2.parameters()], config.lr)
        self.rng = np.random.default_rng(seed)
        self.buffer = _ReplayBuffer(config.total_steps, self.obs_dim, self.act_dim)
        self.episode_starts: list[int] = []
        self.episode_seeds: list[int] = []
        self.snapshots: list[Snapshot] = []
        self.updates = 0

    def policy(self, actor_state: dict[str, torch.Tensor] | None = None, info: dict | None = None) -> ActorPolicy:
        actor = Actor(self.obs_dim, self.act_dim, 1.0, hidden=tuple(self.cfg.hidden))
        actor.load_state_dict(actor_state or self.actor.state_dict())
        return ActorPolicy(actor, self.low, self.high, env_id=self.env_id, info=info)

    def _update(self) -> None:
        cfg, buf = self.cfg, self.buffer
        idx = self.rng.integers(0, buf.n, size=cfg.batch_size)
        o = torch.from_numpy(buf.obs[idx])
        a = torch.from_numpy(buf.act_unit[idx])
        r = torch.from_numpy(buf.rew[idx])
        o2 = torch.from_numpy(buf.next_obs[idx])
        notdone = torch.from_numpy(~buf.term[idx]).float()
        with torch.no_grad():
            noise = (torch.randn_like(a) * cfg.policy_noise).clamp(-cfg.noise_clip, cfg.noise_clip)
            a2 = (self.actor_t(o2) + noise).clamp(-1.0, 1.0)
            target = r + cfg.gamma * notdone * torch.min(self.q1_t(o2, a2), self.q2_t(o2, a2))
        critic_loss = ((self.q1(o, a) - target) ** 2).mean() + ((self.q2(o, a) - target) ** 2).mean()
        self.critic_opt.zero_grad(set_to_none=True)
        critic_loss.backward()
        self.critic_opt.step()
        self.updates += 1
        if self.updates % cfg.policy_freq == 0:
            self.q1.requires_grad_(False)
            actor_loss = -self.q1(o, self.actor(o)).mean()
            self.actor_opt.zero_grad(set_to_none=True)
            actor_loss.backward()
            self.actor_opt.step()
            self.q1.requires_grad_(True)
            for net, tgt in ((self.actor, self.actor_t), (self.q1, self.q1_t), (self.q2, self.q2_t)):
                soft_update(tgt, net, cfg.tau)

    def _evaluate(self, actor_state: dict[str, torch.Tensor], episodes: int, seed: int) -> float:
        return float(rollout_returns(self.env_id, self.policy(actor_state), episodes, seed).mean())

    def train(self) -> None:
        """Run to the step budget (or ``stop_return``), snapshotting every ``eval_every`` steps."""
        from tqdm.auto import tqdm

        cfg = self.cfg
        t0 = time.perf_counter()
        ep_seed = int(self.rng.integers(2**31 - 1))
        obs, _ = self.env.reset(seed=ep_seed)
        self.episode_starts.append(0)
        self.episode_seeds.append(ep_seed)
        bar = tqdm(total=cfg.total_steps, desc=f"TD3 {self.env_id}", disable=not self.progress, mininterval=2.0, smoothing=0.05)
        for step in range(1, cfg.total_steps + 1):
            o = np.asarray(obs, dtype=np.float32)
            if step <= cfg.start_steps:
                u = self.rng.uniform(-1.0, 1.0, self.act_dim).astype(np.float32)
            else:
                with torch.no_grad():
                    u = self.actor(torch.from_numpy(o)[None])[0].numpy()
                u = np.clip(u + self.rng.normal(0.0, cfg.expl_noise, self.act_dim), -1.0, 1.0).astype(np.float32)
            a = from_unit_box(u, self.low, self.high)
            obs, r, term, trunc, _ = self.env.step(a)
            self.buffer.add(o, a, to_unit_box(a, self.low, self.high), r, obs, term, trunc)
            if term or trunc:
                ep_seed = int(self.rng.integers(2**31 - 1))
                obs, _ = self.env.reset(seed=ep_seed)
                if step < cfg.total_steps:
                    self.episode_starts.append(step)
                    self.episode_seeds.append(ep_seed)
            if step > cfg.start_steps:
                self._update()
            if step % cfg.eval_every == 0 or step == cfg.total_steps:
                state = {k: v.detach().clone() for k, v in self.actor.state_dict().items()}
                ret = self._evaluate(state, cfg.eval_episodes, seed=10_000_000 + self.seed * 1000)
                self.snapshots.append(Snapshot(step, time.perf_counter() - t0, ret, state))
                bar.set_postfix(eval_return=f"{ret:.1f}")
                if cfg.stop_return is not None and ret >= cfg.stop_return:
                    bar.update(step - bar.n)
                    break
            bar.update(1)
        bar.close()
        self.train_wall_s = time.perf_counter() - t0
        self.env.close()


def run_dir(root: str | Path, env_id: str, seed: int, config: TD3Config) -> Path:
    """Where the run for ``(env_id, seed, config)`` lives under ``root``."""
    return Path(root) / f"{env_id}-seed{seed}-{config.key()}"


def train_behaviours(
    env_id: str,
    config: TD3Config,
    seed: int,
    out_dir: str | Path,
    ref_episodes: int = 10,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train TD3, pick the expert and medium snapshots, save everything in ``out_dir``.

    Returns (and writes to ``summary.json``) the reference returns, the chosen snapshots and
    the wall time the trainer needed to reach each of them.
    """
    out_dir = Path(out_dir)
    summary_path = out_dir / "summary.json"
    if summary_path.exists():
        return json.loads(summary_path.read_text())
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = config
    log(f"[behaviour] training TD3 on {env_id} (seed {seed}, budget {cfg.total_steps} steps) into {out_dir}")
    trainer = TD3Trainer(env_id, cfg, seed, progress)
    trainer.train()
    snaps = trainer.snapshots
    ref_seed = 20_000_000 + seed * 1000
    r_random = random_return(env_id, ref_episodes, ref_seed)

    # expert: best snapshot by its training evaluation, confirmed over ref_episodes episodes
    best = max(range(len(snaps)), key=lambda i: snaps[i].eval_return)
    expert_returns = rollout_returns(env_id, trainer.policy(snaps[best].actor), ref_episodes, ref_seed)
    r_expert = float(expert_returns.mean())
    if r_expert <= r_random:
        raise RuntimeError(
            f"TD3 on {env_id} did not beat the random policy (expert {r_expert:.1f} <= random {r_random:.1f}); "
            "raise the step budget (--td3-steps; TD3Config.total_steps)"
        )
    zero, one = cfg.reference if cfg.reference is not None else (r_random, r_expert)
    if one <= zero:
        raise ValueError(f"--td3-reference (TD3Config.reference) must be low,high with high > low, got {cfg.reference}")

    def score(ret: float) -> float:
        return (ret - zero) / (one - zero)

    lo, hi = cfg.medium_band
    in_band = [i for i in range(best + 1) if lo <= score(snaps[i].eval_return) <= hi]
    candidates = sorted(in_band, key=lambda i: (abs(score(snaps[i].eval_return) - cfg.medium_target), snaps[i].step))
    if not candidates:  # the curve jumped over the band: take the closest snapshots before the expert
        candidates = sorted(range(best + 1), key=lambda i: abs(score(snaps[i].eval_return) - cfg.medium_target))
    medium, medium_return, tried = None, None, []
    for i in candidates[:5]:
        ret = float(rollout_returns(env_id, trainer.policy(snaps[i].actor), cfg.confirm_episodes, ref_seed).mean())
        tried.append({"step": snaps[i].step, "confirm_return": ret, "score": score(ret)})
        if medium is None or abs(score(ret) - cfg.medium_target) < abs(score(medium_return) - cfg.medium_target):
            medium, medium_return = i, ret
        if lo <= score(ret) <= hi:
            medium, medium_return = i, ret
            break
    assert medium is not None and medium_return is not None

    m_snap, e_snap = snaps[medium], snaps[best]
    save_policy(trainer.policy(e_snap.actor, {"step": e_snap.step, "return": r_expert}), out_dir / "expert.pt")
    save_policy(trainer.policy(m_snap.actor, {"step": m_snap.step, "return": medium_return}), out_dir / "medium.pt")
    buf = trainer.buffer
    np.savez_compressed(
        out_dir / "replay.npz",
        observations=buf.obs[: buf.n],
        actions=buf.act[: buf.n],
        rewards=buf.rew[: buf.n],
        next_observations=buf.next_obs[: buf.n],
        terminations=buf.term[: buf.n],
        truncations=buf.trunc[: buf.n],
        episode_starts=np.asarray(trainer.episode_starts, np.int64),
        episode_seeds=np.asarray(trainer.episode_seeds, np.int64),
    )
    summary = {
        "env_id": env_id,
        "seed": seed,
        "config": dataclasses.asdict(cfg),
        "steps_trained": int(buf.n),
        "train_wall_s": trainer.train_wall_s,
        "ref_episodes": ref_episodes,
        "random_return": r_random,
        "expert": {"step": e_snap.step, "wall_s": e_snap.wall_s, "eval_return": e_snap.eval_return, "return": r_expert,
                   "return_std": float(expert_returns.std())},
        "medium": {"step": m_snap.step, "wall_s": m_snap.wall_s, "eval_return": m_snap.eval_return,
                   "return": medium_return, "score": score(medium_return), "reference": [zero, one], "tried": tried},
        "curve": [{"step": s.step, "wall_s": round(s.wall_s, 2), "eval_return": s.eval_return} for s in snaps],
    }
    summary_path.write_text(json.dumps(summary, indent=2))
    log(
        f"[behaviour] {env_id}: random {r_random:.1f}, expert {r_expert:.1f} (step {e_snap.step}, {e_snap.wall_s:.0f}s), "
        f"medium {medium_return:.1f} = {100 * score(medium_return):.0f}% of [{zero:.1f}, {one:.1f}] (step {m_snap.step}, "
        f"{m_snap.wall_s:.0f}s); "
        f"trained {buf.n} steps in {trainer.train_wall_s:.0f}s"
    )
    return summary


def behaviour_policy(out_dir: str | Path, which: str) -> Policy:
    """The saved ``"medium"`` or ``"expert"`` policy of a finished run."""
    return load_policy(Path(out_dir) / f"{which}.pt")


def replay_until(out_dir: str | Path, step: int) -> dict[str, np.ndarray]:
    """The run's replay buffer cut at ``step`` env steps (the last episode may be partial)."""
    with np.load(Path(out_dir) / "replay.npz") as z:
        data = {k: z[k] for k in z.files}
    n = min(step, len(data["rewards"]))
    out = {k: data[k][:n] for k in ("observations", "actions", "rewards", "next_observations", "terminations", "truncations")}
    keep = data["episode_starts"] < n
    out["episode_starts"], out["episode_seeds"] = data["episode_starts"][keep], data["episode_seeds"][keep]
    return out


__all__ = ["TD3Config", "TD3Trainer", "train_behaviours", "behaviour_policy", "replay_until", "rollout_returns",
           "random_return", "run_dir"]
