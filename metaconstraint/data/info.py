"""``metaconstraint data info ID_OR_PATH``: what a dataset holds, without training on it.

:func:`dataset_info` loads a dataset (built-in name, Minari id or folder, D4RL-format HDF5,
``.npz``) and returns a plain dict: sizes, episode lengths and returns, reference scores and where
they come from, the evaluation env, and what the loader noted; :func:`info_text` formats it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


from .builtin import BUILTIN
from .transitions import Transitions

__all__ = ["dataset_info", "info_text"]


def _kind(source: str) -> str:
    if source in BUILTIN:
        return "built-in Minari dataset"
    p = Path(source).expanduser()
    if p.is_dir():
        return "Minari dataset folder"
    if p.is_file():
        return {".hdf5": "D4RL-format HDF5 file", ".h5": "D4RL-format HDF5 file", ".npz": "npz file"}.get(
            p.suffix.lower(), "file")
    return "local Minari dataset"


def _size_bytes(t: Transitions, source: str) -> int | None:
    from .builtin import builtin_path
    from .loaders import minari_root

    p = Path(source).expanduser()
    if source in BUILTIN:
        p = builtin_path(source)
    elif not p.exists():
        p = minari_root() / source
    if p.is_file():
        return p.stat().st_size
    if p.is_dir():
        return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
    return None


def dataset_info(source: str | os.PathLike, *, env_id: str | None = None, trust_env_spec: bool = False) -> dict[str, Any]:
    """A summary of the dataset at ``source`` as plain data (see the module docstring)."""
    from .loaders import load

    text = os.fspath(source)
    t = load(text, env_id=env_id, trust_env_spec=trust_env_spec)
    rets = t.episode_returns()
    lens = t.episode_lengths()
    refs = None
    if t.ref_min_score is not None and t.ref_max_score is not None:
        refs = (float(t.ref_min_score), float(t.ref_max_score))
    else:
        from .reference import d4rl_reference

        refs = d4rl_reference(t.source) if t.source else None
    score = None
    if refs is not None and refs[1] != refs[0] and rets.size:
        score = float(100.0 * (rets.mean() - refs[0]) / (refs[1] - refs[0]))
    return {
        "source": text,
        "kind": _kind(text),
        "dataset_id": t.metadata.get("dataset_id"),
        "transitions": len(t),
        "episodes": t.num_episodes,
        "episode_length": {"min": int(lens.min()), "mean": float(lens.mean()), "max": int(lens.max())},
        "return": {"mean": float(rets.mean()), "std": float(rets.std()), "min": float(rets.min()), "max": float(rets.max())},
        "normalised_score": score,
        "ref_min_score": None if refs is None else refs[0],
        "ref_max_score": None if refs is None else refs[1],
        "env_id": t.env_id,
        "obs_dim": t.obs_dim,
        "act_dim": t.act_dim,
        "action_low": None if t.action_low is None else [float(x) for x in t.action_low],
        "action_high": None if t.action_high is None else [float(x) for x in t.action_high],
        "terminals": int(t.terminals.sum()),
        "timeouts": int(t.timeouts.sum()),
        "reward": {"min": float(t.rewards.min()), "max": float(t.rewards.max())},
        "size_bytes": _size_bytes(t, text),
        "sha256": t.fingerprint(),
        "algorithm": t.metadata.get("algorithm_name"),
        "notes": list(t.notes),
    }


def _num(x: float) -> str:
    return f"{x:,.1f}" if abs(x) < 1e6 else f"{x:.4g}"


def info_text(info: dict[str, Any]) -> str:
    """``info`` (from :func:`dataset_info`) as a few readable lines."""
    r, ln = info["return"], info["episode_length"]
    name = info["source"] + (f" ({info['dataset_id']})" if info.get("dataset_id") and info["dataset_id"] != info["source"] else "")
    size = f", {info['size_bytes'] / 1e6:.1f} MB" if info.get("size_bytes") else ""
    lines = [
        f"{name}: {info['kind']}{size}",
        f"  {info['transitions']:,} transitions in {info['episodes']:,} episodes (length {ln['min']}-{ln['max']}, "
        f"mean {ln['mean']:.1f}); {info['terminals']:,} terminals, {info['timeouts']:,} timeouts",
        f"  observations {info['obs_dim']}-d, actions {info['act_dim']}-d"
        + (f" in [{min(info['action_low']):g}, {max(info['action_high']):g}]" if info.get("action_low") else "")
        + f"; rewards {_num(info['reward']['min'])} to {_num(info['reward']['max'])}",
        f"  episode return {_num(r['mean'])} ± {_num(r['std'])} (min {_num(r['min'])}, max {_num(r['max'])})"
        + (f"; normalised score {info['normalised_score']:.1f}" if info.get("normalised_score") is not None else ""),
    ]
    if info.get("ref_min_score") is not None:
        lines.append(f"  reference scores: {info['ref_min_score']:g} (score 0) / {info['ref_max_score']:g} (score 100)")
    else:
        lines.append("  reference scores: none (runs report raw returns; give train --ref-min-score/--ref-max-score)")
    lines.append(f"  evaluation env: {info['env_id']}" if info.get("env_id")
                 else "  evaluation env: none named (give train --env-id, e.g. --env-id Hopper-v5)")
    if info.get("sha256"):
        lines.append(f"  content sha256: {info['sha256'][:16]} (runs record it as dataset_sha256; compare builds with it)")
    if info.get("algorithm"):
        lines.append(f"  recorded by: {info['algorithm']}")
    lines += [f"  note: {n}" for n in info.get("notes", [])]
    return "\n".join(lines)
