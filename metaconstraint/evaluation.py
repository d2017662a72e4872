"""Roll a policy out in its dataset's environment and report raw and normalised returns.

What the policy sees: raw env observations, passed through ``normalizer`` when one is given
(pass the normaliser the agent was trained with). Three kinds of policy are accepted:

* an agent with ``act(obs_tensor) -> action_tensor`` (the :class:`metaconstraint.algos.base.Agent`
  protocol; it expects *normalised* observations, so give the ``normalizer``);
* a ``torch.nn.Module`` (e.g. a :class:`metaconstraint.nets.Actor`), called on a float tensor
  on its own device;
* any other callable, called on a numpy ``(n_envs, obs_dim)`` float32 array and returning
  ``(n_envs, act_dim)`` actions.

Actions are clipped to the env's action space. Episode ``i`` always starts from
``env.reset(seed=seed + i)`` whatever the number of envs run side by side (``n_envs`` only batches
the policy's forward passes: one call per step for all envs). A policy that acts on each row alone
gives identical returns for any ``n_envs``; a network's float32 forward pass may round differently
for another batch size, so its returns agree to about 1e-7 relative, not bit for bit.

Normalised score: ``100 * (return - ref_min) / (ref_max - ref_min)`` with D4RL's constants
for D4RL dataset names and the dataset's ``ref_min_score`` / ``ref_max_score`` otherwise.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, Callable, Sequence

import gymnasium as gym
import numpy as np
import torch

from .data.normalization import ObsNormalizer
from .data.reference import D4RL_ENVS, d4rl_family, d4rl_reference, normalize_return
from .data.transitions import Transitions

__all__ = ["EvaluationInterrupted", "as_numpy_policy", "check_eval_env", "evaluate", "normalized_score", "reference_scores"]


class EvaluationInterrupted(RuntimeError):
    """``evaluate``'s ``should_stop()`` said to stop (e.g. a signal arrived); no result."""


def _is_env_id(name: str) -> bool:
    return name in gym.registry


def reference_scores(target: Any) -> tuple[float, float] | None:
    """``(ref_min, ref_max)`` for a dataset (Transitions, MinariDataset, name, id or folder), a pair, or ``None``."""
    if target is None:
        return None
    if isinstance(target, (tuple, list)) and len(target) == 2:
        return float(target[0]), float(target[1])
    if isinstance(target, Transitions):
        if target.ref_min_score is not None and target.ref_max_score is not None:
            return float(target.ref_min_score), float(target.ref_max_score)
        return d4rl_reference(target.source) if target.source else None
    meta = getattr(getattr(target, "storage", None), "metadata", None)  # a MinariDataset
    if meta is not None:
        lo, hi = meta.get("ref_min_score"), meta.get("ref_max_score")
        return (float(lo), float(hi)) if lo is not None and hi is not None else None
    if isinstance(target, (str, os.PathLike)):
        text = os.fspath(target)
        ref = d4rl_reference(text)
        if ref is not None:
            return ref
        if _is_env_id(text):
            return None
        from .data.loaders import describe

        try:
            meta = describe(text)
        except Exception:
            return None
        lo, hi = meta.get("ref_min_score"), meta.get("ref_max_score")
        return (float(lo), float(hi)) if lo is not None and hi is not None else None
    return None


def normalized_score(env_or_dataset: Any, returns: Any) -> Any:
    """Normalised score(s) 0-100 of raw ``returns`` for a dataset, D4RL name or ``(ref_min, ref_max)``."""
    ref = reference_scores(env_or_dataset)
    if ref is None:
        raise ValueError(
            f"no reference scores for {env_or_dataset!r}: not a D4RL name, and no ref_min_score/ref_max_score "
            "in its metadata; pass (ref_min, ref_max)"
        )
    r = np.asarray(returns, dtype=np.float64)
    out = normalize_return(r, *ref)
    return float(out) if out.ndim == 0 else out


def _resolve_env(env: Any, trust_env_spec: bool = False) -> tuple[Any, str, tuple[str, ...] | None]:
    """(what to pass to gym.make, env id for reports, obs keys for Dict observations)."""
    if isinstance(env, Transitions):
        if env.env_spec is None and env.env_id is None:
            raise ValueError(f"dataset {env.source!r} does not name its environment; pass an env id")
        return (env.env_spec or env.env_id), str(env.env_id), env.obs_keys
    if isinstance(env, gym.envs.registration.EnvSpec):
        return env, env.id, None
    text = os.fspath(env)
    if _is_env_id(text):
        return text, text, None
    fam = d4rl_family(text)
    if fam is not None:
        return D4RL_ENVS[fam], D4RL_ENVS[fam], None
    from .data.loaders import _env_spec_from_metadata, describe

    spec = _env_spec_from_metadata(describe(text), f"dataset {text!r}", trust_env_spec)
    if spec is None:
        raise ValueError(f"dataset {text!r} does not record its environment; pass an env id")
    return spec, spec.id, None


def as_numpy_policy(policy: Any, normalizer: ObsNormalizer | None = None, device: Any = None) -> Callable[[np.ndarray], np.ndarray]:
    """Wrap any accepted policy kind (see the module docstring) as ``raw obs batch -> action batch``."""
    act = getattr(policy, "act", None)
    if callable(act) or isinstance(policy, torch.nn.Module):
        fn = act if callable(act) else policy
        if device is None:
            device = getattr(policy, "device", None)
        if device is None and isinstance(policy, torch.nn.Module):
            p = next(policy.parameters(), None)
            device = p.device if p is not None else "cpu"
        dev = torch.device(device or "cpu")

        @torch.no_grad()
        def run(obs: np.ndarray) -> np.ndarray:
            x = torch.as_tensor(obs, dtype=torch.float32, device=dev)
            if normalizer is not None:
                x = normalizer(x)
            return fn(x).detach().float().cpu().numpy()

        return run
    if not callable(policy):
        raise TypeError(f"policy must be an agent with act(), a torch module or a callable, not {type(policy).__name__}")

    def run_np(obs: np.ndarray) -> np.ndarray:
        return np.asarray(policy(normalizer(obs) if normalizer is not None else obs), dtype=np.float32)

    return run_np


def _flat(obs: Any, keys: Sequence[str] | None) -> np.ndarray:
    if isinstance(obs, dict):
        use = keys or sorted(obs)
        return np.concatenate([np.asarray(obs[k], np.float32).reshape(-1) for k in use])
    return np.asarray(obs, np.float32).reshape(-1)


def evaluate(
    policy: Any,
    env_id: Any,
    episodes: int = 10,
    seed: int = 0,
    normalizer: ObsNormalizer | None = None,
    *,
    n_envs: int = 10,
    ref: Any = None,
    device: Any = None,
    env_kwargs: dict[str, Any] | None = None,
    trust_env_spec: bool = False,
    should_stop: Callable[[], bool] | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Run ``episodes`` episodes of ``policy`` and report returns and normalised scores.

    ``env_id``: a Gymnasium env id, a D4RL dataset name (its Gymnasium env, D4RL constants),
    a dataset (:class:`Transitions`, built-in name, Minari id or folder: its evaluation env and
    reference scores). ``ref`` overrides the reference scores (a dataset or ``(min, max)``).
    Returns ``return_mean``, ``return_std``, ``returns``, ``lengths``, ``score_mean``,
    ``score_std``, ``scores`` (``None`` without reference scores), ``ref_min_score``,
    ``ref_max_score``, ``env_id``, ``episodes``, ``seed``, ``wall_s``.

    An env spec read from a dataset's metadata is built only if it names trusted code
    (:mod:`metaconstraint.data.envspec`; ``trust_env_spec=True`` lifts that). ``should_stop`` is
    asked before every env step; when it returns true, :class:`EvaluationInterrupted` is raised.
    ``progress``: a progress bar over the episodes on stderr (removed when done).
    """
    if episodes <= 0:
        raise ValueError(f"episodes must be positive, got {episodes}")
    t0 = time.perf_counter()
    make_arg, name, obs_keys = _resolve_env(env_id, trust_env_spec)
    refs = reference_scores(ref if ref is not None else env_id)
    act_fn = as_numpy_policy(policy, normalizer, device)
    n = max(1, min(int(n_envs), episodes))
    envs = [gym.make(make_arg, **(env_kwargs or {})) for _ in range(n)]
    space = envs[0].action_space
    low = np.asarray(getattr(space, "low", -np.inf), np.float32)
    high = np.asarray(getattr(space, "high", np.inf), np.float32)
    returns = np.zeros(episodes)
    lengths = np.zeros(episodes, dtype=np.int64)
    slot_episode = [-1] * n
    obs = [None] * n
    next_episode = 0
    for k in range(n):  # start one episode per env
        obs[k] = _flat(envs[k].reset(seed=seed + next_episode)[0], obs_keys)
        slot_episode[k] = next_episode
        next_episode += 1
    from tqdm.auto import tqdm

    bar = tqdm(total=episodes, desc=f"eval {name}", unit="episode", leave=False, disable=not progress,
               file=sys.stderr, dynamic_ncols=True, mininterval=0.5)
    try:
        while True:
            active = [k for k in range(n) if slot_episode[k] >= 0]
            if not active:
                break
            if should_stop is not None and should_stop():
                raise EvaluationInterrupted(f"evaluation on {name} stopped after {int(lengths.sum())} env steps")
            batch = np.stack([obs[k] for k in active])
            actions = np.asarray(act_fn(batch), np.float32).reshape(len(active), -1)
            if not np.isfinite(actions).all():
                raise ValueError(f"the policy returned a non-finite action on {name}: {actions[~np.isfinite(actions).all(1)][0]}")
            actions = np.clip(actions, low, high)
            for j, k in enumerate(active):
                o, r, term, trunc, _ = envs[k].step(actions[j])
                ep = slot_episode[k]
                returns[ep] += float(r)
                lengths[ep] += 1
                if term or trunc:
                    bar.update(1)
                    if next_episode < episodes:
                        obs[k] = _flat(envs[k].reset(seed=seed + next_episode)[0], obs_keys)
                        slot_episode[k] = next_episode
                        next_episode += 1
                    else:
                        slot_episode[k] = -1
                else:
                    obs[k] = _flat(o, obs_keys)
    finally:
        bar.close()
        for e in envs:
            e.close()
    scores = None if refs is None else normalize_return(returns, *refs)
    return {
        "env_id": name,
        "episodes": episodes,
        "seed": seed,
        "return_mean": float(returns.mean()),
        "return_std": float(returns.std()),
        "returns": returns.tolist(),
        "lengths": lengths.tolist(),
        "score_mean": None if scores is None else float(scores.mean()),
        "score_std": None if scores is None else float(scores.std()),
        "scores": None if scores is None else scores.tolist(),
        "ref_min_score": None if refs is None else refs[0],
        "ref_max_score": None if refs is None else refs[1],
        "wall_s": time.perf_counter() - t0,
    }


def check_eval_env(
    env_id: Any, seed: int, obs_dim: int | None = None, act_dim: int | None = None, *, trust_env_spec: bool = False
) -> str:
    """Build the evaluation env once and reset it with ``seed``, as :func:`evaluate` will.

    A missing or unknown env, a seed the env refuses, or observation/action sizes that differ
    from ``obs_dim``/``act_dim`` raise ``ValueError`` now instead of at the first evaluation.
    Returns the env id.
    """
    try:
        make_arg, name, obs_keys = _resolve_env(env_id, trust_env_spec)
    except (ValueError, TypeError) as err:
        raise ValueError(f"no evaluation environment: {err}") from err
    try:
        env = gym.make(make_arg)
    except Exception as err:
        raise ValueError(f"cannot build the evaluation env {name!r}: {type(err).__name__}: {err}") from err
    try:
        try:
            obs = _flat(env.reset(seed=seed)[0], obs_keys)
        except Exception as err:
            raise ValueError(f"the evaluation env {name!r} cannot be reset with seed {seed}: {type(err).__name__}: {err}") from err
        act_shape = getattr(env.action_space, "shape", None)
        got_act = int(np.prod(act_shape)) if act_shape is not None else None
    finally:
        env.close()
    if obs_dim is not None and obs.size != obs_dim:
        raise ValueError(f"the evaluation env {name!r} gives observations of size {obs.size}, the data has {obs_dim}")
    if act_dim is not None and got_act is not None and got_act != act_dim:
        raise ValueError(f"the evaluation env {name!r} takes actions of size {got_act}, the data has {act_dim}")
    return name
