"""``load(source)``: Minari (by id or folder), D4RL-format HDF5, ``.npz``, plain arrays, built-in names.

Offline-first: Minari datasets are read with ``download=False`` from ``MINARI_DATASETS_PATH``
(default ``~/.minari/datasets``). Every loader ends in the same checks (see
:mod:`metaconstraint.data.validate`).
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Any, Mapping

import gymnasium as gym
import numpy as np

from .builtin import BUILTIN, builtin_path
from .envspec import check_env_id, env_spec_from_json
from .reference import D4RL_ENVS, d4rl_family, d4rl_reference
from .transitions import EpisodeArrays, Transitions
from .validate import DataError, check_actions, check_env_shapes, check_finite

D4RL_KEYS = ("observations", "actions", "rewards", "terminals", "timeouts", "next_observations")


def load(
    source: str | os.PathLike | Mapping[str, Any] | Transitions,
    *,
    env_id: str | None = None,
    nonfinite: str = "raise",
    out_of_bounds: str = "raise",
    obs_keys: tuple[str, ...] | None = None,
    check_env: bool = True,
    trust_env_spec: bool = False,
) -> Transitions:
    """Load a dataset as :class:`Transitions`.

    ``source``: a built-in name (``"pendulum-medium"``), a local Minari dataset id
    (``"metaconstraint/pendulum/medium-v0"``), a Minari dataset folder, a D4RL-format
    ``.hdf5`` file, an ``.npz`` file with the same keys, or a mapping of arrays.

    ``env_id`` names the evaluation env when the source does not (or overrides it);
    ``nonfinite`` (``"raise"``/``"drop"``) and ``out_of_bounds`` (``"raise"``/``"clip"``/``"drop"``)
    say what to do with bad values; ``obs_keys`` picks and orders the parts of Dict
    observations (default: all keys, sorted); ``check_env`` compares the observation and action
    sizes with the evaluation env (which is then built once).

    An env spec or env id read from the file is built only if it names installed, trusted
    environment code (:mod:`metaconstraint.data.envspec`); ``trust_env_spec=True`` lifts that check.
    """
    t = _read(source, obs_keys, trust_env_spec)
    if env_id is not None:
        t.env_id, t.env_spec = env_id, None
    t = check_finite(t, nonfinite)
    if t.env_id is not None and (check_env or t.action_space is None):
        _attach_env(t, check_env)
    return check_actions(t, out_of_bounds)


def _read(source: Any, obs_keys: tuple[str, ...] | None, trust: bool = False) -> Transitions:
    if isinstance(source, Transitions):
        return source
    if isinstance(source, Mapping):
        return from_arrays(source, "arrays")
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"cannot load a dataset from {type(source).__name__}; pass a name, a path or a dict of arrays")
    text = os.fspath(source)
    if text in BUILTIN:
        t = load_minari_folder(builtin_path(text), obs_keys, trust)
        t.source = text
        return t
    path = Path(text).expanduser()
    if path.is_dir():
        return load_minari_folder(path, obs_keys, trust)
    if path.is_file():
        if path.name == "main_data.hdf5" and (path.parent / "metadata.json").exists():
            return load_minari_folder(path.parent, obs_keys, trust)
        suffix = path.suffix.lower()
        if suffix in (".hdf5", ".h5"):
            return load_hdf5(path, trust)
        if suffix == ".npz":
            return load_npz(path, trust)
        raise DataError(f"don't know how to read '{path}': expected a .hdf5/.h5 or .npz file, or a Minari folder")
    if path.suffix.lower() in (".hdf5", ".h5", ".npz") or os.sep in text and text.startswith((".", os.sep, "~")):
        raise DataError(f"dataset file '{path}' does not exist")
    return load_minari_id(text, obs_keys, trust)


# ---------------------------------------------------------------------------- Minari
def minari_root() -> Path:
    """The local Minari datasets folder (``MINARI_DATASETS_PATH`` or ``~/.minari/datasets``)."""
    return Path(os.environ.get("MINARI_DATASETS_PATH") or Path.home() / ".minari" / "datasets")


def load_minari_id(dataset_id: str, obs_keys: tuple[str, ...] | None = None, trust_env_spec: bool = False) -> Transitions:
    """A local Minari dataset by id (never downloads)."""
    folder = minari_root() / dataset_id
    if not (folder / "data").is_dir():
        try:
            import minari

            local = sorted(minari.list_local_datasets())
        except Exception:  # a misconfigured local store should not hide the real message
            local = []
        raise DataError(
            f"no dataset '{dataset_id}': it is not a built-in name ({', '.join(sorted(BUILTIN))}), not an existing "
            f"file or folder, and not a local Minari dataset under {minari_root()} (set MINARI_DATASETS_PATH); "
            f"local Minari datasets: {local or 'none'}"
        )
    t = load_minari_folder(folder, obs_keys, trust_env_spec)
    t.source = dataset_id
    return t


def _env_spec_from_metadata(meta: Mapping[str, Any], where: str = "the dataset's metadata.json", trust: bool = False) -> Any:
    """The dataset's (evaluation) env spec, checked (:func:`metaconstraint.data.envspec.check_env_spec`)."""
    key = "eval_env_spec" if meta.get("eval_env_spec") else "env_spec"
    text = meta.get(key)
    return env_spec_from_json(text if isinstance(text, str) else None, f"{where} ({key})", trust)


def _flatten_obs(obs: Any, space: gym.Space, keys: tuple[str, ...] | None, n: int) -> tuple[np.ndarray, tuple | None]:
    if isinstance(space, gym.spaces.Box):
        return np.asarray(obs, np.float32).reshape(n, -1), None
    if isinstance(space, gym.spaces.Dict):
        use = tuple(keys) if keys else tuple(sorted(space.spaces))
        missing = [k for k in use if k not in obs]
        if missing:
            raise DataError(f"observation key(s) {missing} not in the dataset's Dict observations {sorted(obs)}")
        parts = []
        for k in use:
            if not isinstance(space.spaces[k], gym.spaces.Box):
                raise DataError(f"observation part '{k}' is {space.spaces[k]}; only Box parts can be used")
            parts.append(np.asarray(obs[k], np.float32).reshape(n, -1))
        return np.concatenate(parts, axis=1), use
    raise DataError(f"observation space {space} is not supported (Box, or Dict of Boxes)")


def load_minari_folder(path: str | Path, obs_keys: tuple[str, ...] | None = None, trust_env_spec: bool = False) -> Transitions:
    """A Minari dataset from its folder (the one holding ``data/``, or ``data/`` itself).

    Its env spec is checked before anything can build it (see :func:`load`)."""
    from minari import MinariDataset

    path = Path(path)
    data = path / "data" if (path / "data").is_dir() else path
    if not (data / "metadata.json").is_file():
        raise DataError(f"'{path}' is not a Minari dataset folder: no metadata.json in {data}")
    try:
        ds = MinariDataset(data)
        meta = dict(ds.storage.metadata)
    except Exception as err:
        raise DataError(f"cannot read the Minari dataset in '{data}': {type(err).__name__}: {err}") from err
    act_space = ds.action_space
    if not isinstance(act_space, gym.spaces.Box):
        raise DataError(f"{meta.get('dataset_id', data)}: action space {act_space} is not continuous (Box)")
    used_keys: list = [None]

    def episodes():
        done = 0  # episodes read so far: the failing one is the next
        try:
            for ep in ds.storage.get_episodes(ds.episode_indices):  # one file open for all episodes
                T = len(ep["rewards"])
                obs, used_keys[0] = _flatten_obs(ep["observations"], ds.observation_space, obs_keys, T + 1)
                yield EpisodeArrays(obs, np.asarray(ep["actions"], np.float32).reshape(T, -1), ep["rewards"],
                                    ep["terminations"], ep["truncations"])
                done += 1
        except DataError:
            raise
        except Exception as err:
            raise DataError(
                f"cannot read episode {done} of the Minari dataset in '{data}' (the file may be truncated): "
                f"{type(err).__name__}: {err}"
            ) from err

    spec = _env_spec_from_metadata(meta, str(data / "metadata.json"), trust_env_spec)
    source = str(meta.get("dataset_id", data))
    t = Transitions.from_episodes(
        episodes(),
        source=source,
        env_id=spec.id if spec is not None else None,
        env_spec=spec,
        observation_space=ds.observation_space,
        action_space=act_space,
        ref_min_score=_float_or_none(meta.get("ref_min_score")),
        ref_max_score=_float_or_none(meta.get("ref_max_score")),
        metadata={k: v for k, v in meta.items() if isinstance(v, (str, int, float, bool, list))},
    )
    t.obs_keys = used_keys[0]
    expected = int(meta.get("total_steps", len(t)))
    if expected != len(t):
        raise DataError(f"{source}: metadata says {expected} steps but the episodes hold {len(t)} (truncated file?)")
    return t


def _float_or_none(x: Any) -> float | None:
    try:
        return None if x is None else float(x)
    except (TypeError, ValueError):
        return None


# ---------------------------------------------------------------------------- D4RL HDF5 / npz / arrays
def _info_from_attrs(attrs: Mapping[str, Any], path: Path, trust: bool = False) -> dict[str, Any]:
    """env id and reference scores from file attributes, else from a D4RL file name."""
    info: dict[str, Any] = {"notes": []}
    env_id = attrs.get("env_id")
    if isinstance(env_id, bytes):
        env_id = env_id.decode()
    if isinstance(env_id, np.ndarray):
        env_id = str(env_id.item()) if env_id.size == 1 else None
    fam = d4rl_family(path)
    if env_id:
        info["env_id"] = check_env_id(str(env_id), f"{path} (env_id)", trust)
    elif fam is not None:
        info["env_id"] = D4RL_ENVS[fam]
        info["notes"].append(f"env id {D4RL_ENVS[fam]} guessed from the D4RL file name (pass env_id= to override)")
    ref = d4rl_reference(path)
    lo, hi = _float_or_none(attrs.get("ref_min_score")), _float_or_none(attrs.get("ref_max_score"))
    if lo is not None and hi is not None:
        info["ref_min_score"], info["ref_max_score"] = lo, hi
    elif ref is not None:
        info["ref_min_score"], info["ref_max_score"] = ref
        info["notes"].append(f"reference scores {ref} are D4RL's for '{fam}'")
    return info


def load_hdf5(path: str | Path, trust_env_spec: bool = False) -> Transitions:
    """A D4RL-format HDF5 file: keys ``observations, actions, rewards, terminals, timeouts``
    (optional ``next_observations``) at the top level; attributes ``env_id``,
    ``ref_min_score``, ``ref_max_score`` are used when present."""
    import h5py

    path = Path(path)
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise DataError(f"cannot read '{path}' as HDF5 (truncated, or not an HDF5 file): {err}") from err
    with f:
        arrays: dict[str, np.ndarray] = {}
        for key in D4RL_KEYS:
            if key in f:
                try:
                    arrays[key] = f[key][()]
                except Exception as err:
                    raise DataError(f"{path}: cannot read key '{key}' (the file may be truncated): {err}") from err
        if not arrays:
            raise DataError(
                f"{path}: no D4RL keys at the top level (found: {sorted(f.keys())}); expected {list(D4RL_KEYS[:5])}"
            )
        info = _info_from_attrs(dict(f.attrs), path, trust_env_spec)
    return from_arrays(arrays, str(path), **info)


def load_npz(path: str | Path, trust_env_spec: bool = False) -> Transitions:
    """An ``.npz`` with the D4RL keys (and optionally ``env_id``, ``ref_min_score``, ``ref_max_score``)."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as err:
        raise DataError(f"cannot read '{path}' as .npz (truncated, or not an npz file): {err}") from err
    attrs = {k: arrays.pop(k) for k in ("env_id", "ref_min_score", "ref_max_score") if k in arrays}
    return from_arrays(arrays, str(path), **_info_from_attrs(attrs, path, trust_env_spec))


def from_arrays(arrays: Mapping[str, Any], source: str = "arrays", **info: Any) -> Transitions:
    """Plain arrays with the D4RL keys (see :meth:`Transitions.from_arrays`)."""
    return Transitions.from_arrays(arrays, source, **info)


def _attach_env(t: Transitions, check: bool) -> None:
    """Build the evaluation env once: compare sizes, fill in the action space if unknown."""
    try:
        env = gym.make(t.env_spec) if t.env_spec is not None else gym.make(t.env_id)
    except Exception as err:
        t.notes.append(f"could not build env {t.env_id} to check the dataset against it: {type(err).__name__}: {err}")
        return
    try:
        obs_space, act_space = env.observation_space, env.action_space
    finally:
        env.close()
    if check:
        if isinstance(obs_space, gym.spaces.Dict):
            keys = t.obs_keys or tuple(sorted(obs_space.spaces))
            obs_dim = sum(int(np.prod(obs_space.spaces[k].shape)) for k in keys if k in obs_space.spaces)
        else:
            obs_dim = int(np.prod(obs_space.shape))
        act_dim = int(np.prod(act_space.shape)) if isinstance(act_space, gym.spaces.Box) else -1
        check_env_shapes(t, obs_dim, act_dim, t.env_id)
    if t.action_space is None and isinstance(act_space, gym.spaces.Box):
        t.action_space = act_space


# ---------------------------------------------------------------------------- writers
def save_hdf5(t: Transitions, path: str | Path) -> Path:
    """Write ``t`` in D4RL format (with ``next_observations``), env id and reference scores as attributes."""
    import h5py

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        for key in D4RL_KEYS:
            f.create_dataset(key, data=getattr(t, key), compression="gzip")
        for key in ("env_id", "ref_min_score", "ref_max_score"):
            if getattr(t, key) is not None:
                f.attrs[key] = getattr(t, key)
    return path


def save_npz(t: Transitions, path: str | Path) -> Path:
    """Write ``t`` as a compressed ``.npz`` readable by :func:`load_npz`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    extra = {k: np.asarray(getattr(t, k)) for k in ("env_id", "ref_min_score", "ref_max_score") if getattr(t, k) is not None}
    np.savez_compressed(path, **{k: getattr(t, k) for k in D4RL_KEYS}, **extra)
    return path


def describe(source: str | os.PathLike) -> dict[str, Any]:
    """Metadata of a Minari dataset (built-in name, id or folder) without reading its episodes."""
    text = os.fspath(source)
    folder = builtin_path(text) if text in BUILTIN else Path(text) if Path(text).is_dir() else minari_root() / text
    data = folder / "data" if (folder / "data").is_dir() else folder
    try:
        return json.loads((data / "metadata.json").read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise DataError(f"cannot read the metadata of '{source}' ({data / 'metadata.json'}): {err}") from err
