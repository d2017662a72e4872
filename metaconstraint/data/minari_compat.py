"""``minari.DataCollector`` without jax.

Minari 0.5's episode buffer imports ``jax.tree_util`` (the ``minari[create]`` extra) only to
append each step to per-leaf lists. :class:`Collector` is the real ``DataCollector`` whose
buffer appends with a small pure-Python tree walk instead, so writing datasets needs no jax.
The files written are ordinary Minari datasets, read back by plain ``minari.load_dataset``.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from minari import DataCollector
from minari.data_collector.episode_buffer import EpisodeBuffer


def _wrap(tree: Any) -> Any:
    """A leaf ``x`` becomes ``[x]``; dicts and tuples are walked."""
    if isinstance(tree, dict):
        return {k: _wrap(v) for k, v in tree.items()}
    if isinstance(tree, tuple):
        return tuple(_wrap(v) for v in tree)
    return [tree]


def _append(data: Any, buffer: Any) -> Any:
    """Append the leaves of ``data`` to the matching lists of ``buffer`` (a lone leaf becomes a list)."""
    if isinstance(data, dict):
        return {k: _append(v, buffer[k]) for k, v in data.items()}
    if isinstance(data, tuple):
        return tuple(_append(d, b) for d, b in zip(data, buffer))
    if isinstance(buffer, list):
        buffer.append(data)
        return buffer
    return [buffer, data]


class _ListEpisodeBuffer(EpisodeBuffer):
    def add_step_data(self, step_data: Any) -> "_ListEpisodeBuffer":
        obs = step_data["observation"]
        observations = obs if self.observations is None else _append(obs, self.observations)
        actions = _wrap(step_data["action"]) if self.actions is None else _append(step_data["action"], self.actions)
        infos = _wrap(step_data["info"]) if self.infos is None else _append(step_data["info"], self.infos)
        self.rewards.append(step_data["reward"])
        self.terminations.append(step_data["terminated"])
        self.truncations.append(step_data["truncated"])
        return dataclasses.replace(self, observations=observations, actions=actions, infos=infos)


def _as_list_buffer(buf: EpisodeBuffer | None) -> EpisodeBuffer | None:
    if buf is None or isinstance(buf, _ListEpisodeBuffer):
        return buf
    return _ListEpisodeBuffer(**{f.name: getattr(buf, f.name) for f in dataclasses.fields(EpisodeBuffer)})


class Collector(DataCollector):
    """``minari.DataCollector`` whose episode buffers need no jax (see the module docstring)."""

    def reset(self, *args: Any, **kwargs: Any):
        out = super().reset(*args, **kwargs)
        self._buffer = _as_list_buffer(self._buffer)
        return out

    def step(self, action: Any):
        out = super().step(action)
        self._buffer = _as_list_buffer(self._buffer)
        return out


def compact_hdf5(path: str | os.PathLike) -> tuple[int, int]:
    """Rewrite a Minari ``main_data.hdf5`` with contiguous (unchunked) datasets; same content.

    Minari writes each episode's arrays chunked, which costs ~17 kB per episode; a short-episode
    dataset shrinks about 3x. Returns the sizes in bytes before and after.
    """
    import h5py

    path = Path(path)
    tmp = path.with_name(path.name + ".compact")

    def copy(src: Any, dst: Any) -> None:
        for k, v in src.attrs.items():
            dst.attrs[k] = v
        for name, item in src.items():
            if isinstance(item, h5py.Group):
                copy(item, dst.create_group(name))
            else:
                d = dst.create_dataset(name, data=item[()])
                for k, v in item.attrs.items():
                    d.attrs[k] = v

    before = path.stat().st_size
    with h5py.File(path, "r") as src, h5py.File(tmp, "w") as dst:
        copy(src, dst)
    os.replace(tmp, path)
    return before, path.stat().st_size
