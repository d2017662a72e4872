"""Offline datasets: loading, validation, normalisation, sampling, and making new ones.

``load(source)`` returns :class:`Transitions` from a built-in name, a local Minari id or
folder, a D4RL-format ``.hdf5``, an ``.npz`` or a dict of arrays; :class:`ObsNormalizer` and
:class:`RewardTransform` are computed once from it; :class:`Sampler` keeps it on the training
device and draws :class:`metaconstraint.batch.Batch` es. ``collect`` (module
:mod:`metaconstraint.data.collect`) writes new Minari datasets; :class:`Collector` is the
``minari.DataCollector`` it writes them with, usable on its own: it needs no jax.
"""

from __future__ import annotations

from .builtin import BUILTIN, builtin_path, builtin_root
from .loaders import describe, from_arrays, load, load_hdf5, load_minari_folder, load_minari_id, load_npz, minari_root, save_hdf5, save_npz
from .normalization import REWARD_MODES, ObsNormalizer, RewardTransform
from .sampler import Sampler
from .reference import ANTMAZE_DATASETS, D4RL_ENVS, D4RL_REF_SCORES, d4rl_reference, normalize_return
from .transitions import EpisodeArrays, Transitions, concatenate
from .validate import DataError, DataWarning

__all__ = [
    "ANTMAZE_DATASETS", "BUILTIN", "Collector", "D4RL_ENVS", "D4RL_REF_SCORES", "DataError", "DataWarning", "EpisodeArrays", "ObsNormalizer",
    "REWARD_MODES", "RewardTransform", "Sampler", "Transitions", "builtin_path", "builtin_root", "concatenate", "d4rl_reference",
    "describe", "from_arrays", "load", "load_hdf5", "load_minari_folder", "load_minari_id", "load_npz", "minari_root",
    "normalize_return", "save_hdf5", "save_npz",
]


def __getattr__(name: str):  # Collector imports minari's collector machinery: only when asked for
    if name == "Collector":
        from .minari_compat import Collector

        return Collector
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
