"""The run directory: its layout, checkpoints, lock, RNG state, summary, and reading a run back.

Layout::

    config.yaml          the fully resolved RunConfig (re-runnable with --config)
    metrics.csv          one row per logged step (means over the interval; eval columns at eval steps)
    metrics.jsonl        the same rows as JSON lines (plus any quantity not in the CSV header)
    checkpoints/         step_00001000.pt ... (the last ``keep_checkpoints``), written atomically
    plots/*.png          alpha, losses, score, overview
    summary.json         status, final/best score, alpha trajectory, wall time
    tensorboard/         only when the ``tensorboard`` package is installed

    .lock                the writer's lock (``fcntl.flock``; holds its PID): one train process per directory

Checkpoints hold only tensors, numbers, strings and containers of them, so they load with
``torch.load(weights_only=True)``; nothing in a checkpoint file can run code. Each carries a
SHA-256 of its content (key ``sha256``, see :func:`checkpoint_digest`), verified on load; a resume
skips damaged checkpoints for the newest intact one. The metrics files are written by
:mod:`metaconstraint.metrics`, the loop that fills the directory is :mod:`metaconstraint.training`.
"""

from __future__ import annotations

import csv
import dataclasses
import errno
import fcntl
import hashlib
import json
import os
import pickle
import random
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import torch
import yaml
from torch import Tensor

from . import algos
from .config import ConfigError, RunConfig, coefficient_name, dotted_keys, renamed_agent_setting, run_config_from_dict
from .data import ObsNormalizer, Transitions
from .data.envspec import check_env_id, env_spec_from_json

__all__ = [
    "CHECKPOINT_FORMAT", "CheckpointError", "CheckpointNotice", "LoadedRun", "RunData", "RunEnv", "RunError",
    "RunLock", "RunWarning", "atomic_write_text", "check_device", "check_resumable", "checkpoint_arg",
    "checkpoint_digest", "checkpoint_path", "find_runs", "flat_settings", "git_commit", "latest_checkpoint",
    "list_checkpoints", "load_checkpoint", "load_run", "load_run_data", "read_metrics", "read_summary",
    "remove_temp_files", "resume_checkpoint", "rng_state", "run_environment", "save_checkpoint", "set_rng_state",
]  # fmt: skip

CHECKPOINT_FORMAT = "metaconstraint.checkpoint/1"
_CKPT_NAME = re.compile(r"^step_(\d+)\.pt$")


class RunError(RuntimeError):
    """A run cannot start or continue; the message says what to do."""


class CheckpointError(RunError):
    """A checkpoint file is missing, damaged, or holds something other than plain data."""


class CheckpointNotice(UserWarning):
    """A checkpoint was loaded without a checksum to verify (written before checksums existed)."""




class RunWarning(UserWarning):
    """A run directory's file could not be used and was skipped (the message says which and why)."""


# ----------------------------------------------------------------------------- checkpoints
def checkpoint_digest(state: dict[str, Any]) -> str:
    """SHA-256 (hex) of a checkpoint's content, every key but ``sha256`` itself.

    The nested dicts and lists are walked in their stored order; every key, the type and ``repr``
    of every plain value, and each tensor's dtype, shape and raw bytes enter the hash, so a flipped
    byte anywhere in the data gives another digest.
    """
    h = hashlib.sha256()

    def walk(x: Any) -> None:
        if isinstance(x, Tensor):
            t = x.detach().to("cpu").contiguous()
            h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy())
        elif isinstance(x, dict):
            h.update(b"D%d" % len(x))
            for k, v in x.items():
                walk(k)
                walk(v)
        elif isinstance(x, (list, tuple)):
            h.update(b"L%d" % len(x))
            for v in x:
                walk(v)
        else:
            h.update(f"{type(x).__name__}:{x!r};".encode())

    walk({k: v for k, v in state.items() if k != "sha256"})
    return h.hexdigest()


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write ``state`` with its :func:`checkpoint_digest` (key ``sha256``) to ``path`` atomically.

    A temporary file in the same folder, fsync, rename: a crash (or exception, e.g. a full disk)
    during the write leaves any earlier file at ``path`` untouched and no half-written checkpoint
    under a checkpoint name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v for k, v in state.items() if k != "sha256"}
    state["sha256"] = checkpoint_digest(state)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass
    return path


def load_checkpoint(
    path: str | Path, map_location: Any = "cpu", *, echo: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Read a checkpoint with ``torch.load(weights_only=True)`` (plain data only, no code runs) and
    verify its SHA-256. A checkpoint without one (older versions) loads with a notice, given to
    ``echo`` or else as a :class:`CheckpointNotice` warning."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint '{path}' does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        text = str(err)
        found = [ln.strip() for ln in text.splitlines() if "Unsupported global" in ln or "GLOBAL" in ln]
        if not found:
            raise CheckpointError(f"cannot read checkpoint '{path}' (damaged or not a checkpoint): {_last_line(text)}") from err
        raise CheckpointError(
            f"refusing to load '{path}': it holds objects other than tensors, numbers and strings "
            f"({found[0]}), and loading it could run code from the file. Only load checkpoints written by "
            "metaconstraint that you trust."
        ) from err
    except Exception as err:  # truncated zip, wrong magic number, ...
        raise CheckpointError(f"cannot read checkpoint '{path}' (damaged or not a checkpoint): {err}") from err
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"'{path}' is not a metaconstraint training checkpoint (format {found!r})")
    stored = state.pop("sha256", None)
    if stored is None:
        notice = f"note: checkpoint '{path}' has no checksum (written by an older metaconstraint); loaded unverified"
        if echo is not None:
            echo(notice)
        else:
            warnings.warn(notice, CheckpointNotice, stacklevel=2)
    else:
        actual = checkpoint_digest(state)
        if actual != stored:
            raise CheckpointError(
                f"checkpoint '{path}' is damaged: its content does not match the SHA-256 stored in it "
                f"(stored {str(stored)[:12]}..., computed {actual[:12]}...)"
            )
    return state


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("Check the documentation")]
    return lines[-1] if lines else text


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """``(step, path)`` of the run's checkpoints, oldest first (temporary files ignored)."""
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    out = []
    for p in folder.iterdir():
        m = _CKPT_NAME.match(p.name)
        if m and p.is_file():
            out.append((int(m.group(1)), p))
    return sorted(out)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The run's newest checkpoint (None when it has none)."""
    ckpts = list_checkpoints(run_dir)
    return ckpts[-1][1] if ckpts else None


def checkpoint_path(run_dir: str | Path, step: int) -> Path:
    """Where the checkpoint of ``step`` lives: ``checkpoints/step_00001000.pt``."""
    return Path(run_dir) / "checkpoints" / f"step_{step:08d}.pt"


def checkpoint_arg(run_dir: str | Path, checkpoint: str | Path | int) -> Path:
    """A ``--checkpoint`` value (a step number or a file) as the checkpoint's path."""
    if isinstance(checkpoint, int) or (isinstance(checkpoint, str) and checkpoint.isdigit()):
        path = checkpoint_path(run_dir, int(checkpoint))
        if not path.is_file():
            have = [s for s, _ in list_checkpoints(run_dir)]
            raise RunError(f"'{run_dir}' has no checkpoint for step {int(checkpoint)}; it has steps {have}")
        return path
    return Path(checkpoint)


def resume_checkpoint(
    run_dir: Path, choice: str | Path | int | None, device: Any, echo: Callable[[str], None]
) -> tuple[Path, dict[str, Any]] | None:
    """The checkpoint a resume continues from and its state: ``choice`` (a path or a step) if given, else
    the newest intact one (damaged newer ones moved aside to ``*.pt.damaged``, with a message to ``echo``);
    None when the run has no checkpoint at all."""
    if choice is not None:
        path = checkpoint_arg(run_dir, choice)
        return path, load_checkpoint(path, map_location=device, echo=echo)
    damaged: list[tuple[Path, CheckpointError]] = []
    for _, path in reversed(list_checkpoints(run_dir)):
        try:
            state = load_checkpoint(path, map_location=device, echo=echo)
        except CheckpointError as err:
            damaged.append((path, err))
            continue
        for bad, err in damaged:
            aside = bad.with_name(bad.name + ".damaged")
            os.replace(bad, aside)  # kept for inspection, no longer listed as a checkpoint
            echo(f"warning: {err}; moved it aside to {aside.name}")
        if damaged:
            echo(f"resuming from the newest intact checkpoint instead: {path.name}")
        return path, state
    if not damaged:
        return None
    detail = "; ".join(str(err) for _, err in damaged)
    raise RunError(
        f"no intact checkpoint to resume {run_dir} from: {detail}. Start it again with metaconstraint train "
        f"--config {run_dir / 'config.yaml'} --run-dir NEW_DIR"
    )


def check_resumable(state: dict[str, Any], config: RunConfig, env: RunEnv) -> None:
    """Refuse to resume from ``state`` when the run's settings (the device aside) or the dataset's
    size and shapes differ from the checkpoint's: a resumed run keeps what it started with."""
    saved = dict(state["config"])
    try:  # a checkpoint written before a setting existed lacks it: compare with that setting's default
        saved = run_config_from_dict(saved).to_dict()
    except ConfigError:
        pass
    ours = config.to_dict()
    saved.pop("device", None)
    ours.pop("device", None)
    if saved != ours:
        diff = sorted(k for k in set(saved) | set(ours) if saved.get(k) != ours.get(k))
        raise RunError(
            f"config.yaml differs from the checkpoint's config in {diff}; a resumed run keeps the settings it "
            "started with (restore config.yaml, or start a new run with --config)"
        )
    for key in ("dataset_size", "obs_dim", "act_dim"):
        if int(state["env"][key]) != int(getattr(env, key)):
            raise RunError(
                f"the dataset {config.dataset} has changed since the run started: {key} was {state['env'][key]} "
                f"and is {getattr(env, key)} now. A resumed run must see the same data; restore the dataset or "
                "start a new run"
            )


# ----------------------------------------------------------------------------- RNG state
def rng_state() -> dict[str, Any]:
    """The global torch (and CUDA), numpy and Python RNG states, as plain data for a checkpoint."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else [],
        "numpy": {
            "kind": str(np_state[0]),
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "gauss": float(np_state[4]),
        },
        "python": _py_random_state(),
    }


def _py_random_state() -> list[Any]:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


# ----------------------------------------------------------------------------- writing files
def atomic_write_text(path: Path, text: str) -> None:
    """Write ``path`` through a temporary file and a rename: readers see the old text or the new, never half."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


_TMP_NAME = re.compile(r"^\..+\.\d+\.tmp$")  # what save_checkpoint / atomic_write_text name their temporary files


def remove_temp_files(run_dir: str | Path) -> list[Path]:
    """Delete the temporary files a killed write left in ``run_dir`` and its ``checkpoints/``.

    Call it only while holding the run's lock (no other process can be writing them)."""
    removed = []
    for folder in (Path(run_dir), Path(run_dir) / "checkpoints"):
        if folder.is_dir():
            for p in folder.iterdir():
                if _TMP_NAME.match(p.name) and p.is_file():
                    p.unlink(missing_ok=True)
                    removed.append(p)
    return removed


class RunLock:
    """An exclusive ``fcntl.flock`` on ``<run_dir>/.lock``, which holds the owner's PID.

    Only one process at a time trains into (or resumes) a run directory; the OS drops the lock
    when its process exits or dies, so a killed run leaves nothing to clean up by hand.
    """

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / ".lock"
        self._fd: int | None = None
        self.created: list[Path] = []  # the folders create() made, deepest first

    @classmethod
    def create(cls, run_dir: str | Path) -> "RunLock":
        """Create ``run_dir`` (with its missing parents) and lock it; :meth:`undo` removes what this made."""
        run_dir = Path(run_dir)
        created = [p for p in (run_dir, *run_dir.parents) if not p.exists()]
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise RunError(f"cannot create the run directory '{run_dir}': {err.strerror or err}") from err
        lock = cls(run_dir).acquire()
        lock.created = created
        return lock

    def undo(self) -> None:
        """Release the lock and, when :meth:`create` made the run directory (nothing else was written
        there yet), remove it with the lock file: a run that failed to start leaves no trace."""
        if self.created:
            self.path.unlink(missing_ok=True)
            self.release()
            for folder in self.created:
                try:
                    folder.rmdir()
                except OSError:
                    break

    def acquire(self) -> "RunLock":
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise RunError(f"cannot write to the run directory '{self.path.parent}': {err.strerror or err}") from err
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise RunError(f"cannot lock the run directory '{self.path.parent}': {err.strerror or err}") from err
            raise RunError(
                f"'{self.path.parent}' is in use by another metaconstraint process (PID {holder}); two processes "
                "writing one run directory would mix their files. Wait for it to finish (or stop it), or choose "
                "another --run-dir"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None


def check_device(name: str) -> torch.device:
    """``torch.device(name)``, or a ConfigError when it is malformed or not available here."""
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError) as err:
        raise ConfigError(f"device '{name}' is not a device name (cpu, cuda, cuda:N or mps): {err}") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device '{name}' requested but CUDA is not available here; use --device cpu")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError(f"device '{name}' requested but MPS is not available here; use --device cpu")
    return dev




# ----------------------------------------------------------------------------- what a run knows
@dataclass
class RunEnv:
    """What eval and export need to know about the dataset's environment (kept in checkpoints)."""

    obs_dim: int
    act_dim: int
    max_action: float
    env_id: str | None
    env_spec_json: str | None
    ref_min_score: float | None
    ref_max_score: float | None
    action_low: list[float] | None
    action_high: list[float] | None
    dataset_source: str
    dataset_size: int

    @classmethod
    def of(cls, data: Transitions) -> "RunEnv":
        spec_json = None
        if data.env_spec is not None:
            try:
                spec_json = data.env_spec.to_json()
            except Exception:
                spec_json = None
        return cls(
            obs_dim=data.obs_dim,
            act_dim=data.act_dim,
            max_action=float(data.max_action),
            env_id=data.env_id,
            env_spec_json=spec_json,
            ref_min_score=data.ref_min_score,
            ref_max_score=data.ref_max_score,
            action_low=None if data.action_low is None else [float(x) for x in data.action_low],
            action_high=None if data.action_high is None else [float(x) for x in data.action_high],
            dataset_source=str(data.source),
            dataset_size=len(data),
        )

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def flat_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """``{"steps": 8000, "agent": {"alpha": 2.5, "constraint": {"lr": 0.1}}}`` -> ``{"steps": 8000,
    "agent.alpha": 2.5, "agent.constraint.lr": 0.1}`` (tuples as lists). A setting saved under a name it
    had before a rename (``alpha_lr``) is listed under its current name (``agent.constraint.lr``)."""

    def plain(v: Any) -> Any:
        return [plain(x) for x in v] if isinstance(v, (list, tuple)) else v

    out: dict[str, Any] = {}
    for key, value in config.items():
        if key == "agent" and isinstance(value, Mapping):
            algo = str(config.get("algo"))
            out.update({f"agent.{renamed_agent_setting(algo, k) or k}": plain(v) for k, v in dotted_keys(value).items()})
        elif key != "agent":
            out[str(key)] = plain(value)
    return out


def _version(package: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def git_commit(path: str | Path | None = None) -> dict[str, Any] | None:
    """``{"commit": sha, "dirty": bool}`` of the git checkout holding ``path`` (default: this package), or
    None when it is not inside one (an installed wheel) or git is missing."""
    import subprocess

    here = Path(path) if path is not None else Path(__file__).resolve().parent.parent
    if not any((p / ".git").exists() for p in (here, *here.parents)):
        return None
    try:
        sha = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if sha.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": sha.stdout.strip(), "dirty": bool(dirty.stdout.strip()) if dirty.returncode == 0 else None}


def run_environment(device: Any) -> dict[str, Any]:
    """What a run ran on, for ``summary.json``: package versions, the git commit when run from a checkout,
    the device and torch's thread count."""
    import platform

    dev = torch.device(device)
    cpu = cpu_name()
    info: dict[str, Any] = {
        "versions": {"metaconstraint": _version("metaconstraint"), "torch": torch.__version__,
                     "gymnasium": _version("gymnasium"), "minari": _version("minari"), "numpy": np.__version__,
                     "python": platform.python_version()},
        "git": git_commit(),
        "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else cpu,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        # the CPU and the vector instructions torch's kernels use: float results (and so data made by training,
        # like `collect`'s TD3 behaviours) can differ between machines that differ here
        "cpu": cpu,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }
    return info


def cpu_name() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), else what the platform module knows."""
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# ----------------------------------------------------------------------------- reading a run
def read_summary(run_dir: str | Path) -> dict[str, Any]:
    """``summary.json`` as a dict: ``{}`` when there is none, and ``{}`` with a :class:`RunWarning`
    when it is damaged (not JSON, not a mapping), so a report or plot over many runs goes on."""
    path = Path(run_dir) / "summary.json"
    if not path.is_file():
        return {}
    try:
        summary = json.loads(path.read_text(errors="replace"))
    except (OSError, ValueError) as err:
        summary, why = None, f"{type(err).__name__}: {err}"
    else:
        why = f"it holds a {type(summary).__name__}, not a mapping"
    if isinstance(summary, dict):
        return summary
    warnings.warn(f"skipping the damaged {path} ({why}); the run counts as having no summary", RunWarning, stacklevel=2)
    return {}


def read_metrics(run_dir: str | Path) -> list[dict[str, float]]:
    """``metrics.csv`` as a list of rows with float values (missing values left out)."""
    path = Path(run_dir) / "metrics.csv"
    if not path.exists():
        return []
    rows = []
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            rows.append({k: float(v) for k, v in r.items() if v not in ("", None)})
    return rows


@dataclass
class RunData:
    """A run directory's config, metrics rows and summary."""

    path: Path
    config: dict[str, Any]
    rows: list[dict[str, float]]
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def algo(self) -> str:
        return str(self.config.get("algo", "?"))

    @property
    def dataset(self) -> str:
        return str(self.config.get("dataset", "?"))

    @property
    def seed(self) -> int:
        return int(self.config.get("seed", 0))

    @property
    def coef_key(self) -> str:
        if self.summary.get("coefficient"):
            return str(self.summary["coefficient"])
        try:
            return coefficient_name(self.algo)
        except ConfigError:  # an algorithm this package does not know
            return "alpha"

    def series(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """``(steps, values)`` of the rows that have ``key``."""
        pts = [(r["step"], r[key]) for r in self.rows if key in r and "step" in r]
        if not pts:
            return np.zeros(0), np.zeros(0)
        a = np.asarray(pts, dtype=np.float64)
        return a[:, 0], a[:, 1]


def load_run_data(run_dir: str | Path) -> RunData:
    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"'{run_dir}' is not a run directory (no config.yaml)")
    config = yaml.safe_load(cfg_path.read_text()) or {}
    summary = read_summary(run_dir)  # a damaged summary.json is skipped with a warning
    return RunData(run_dir, config, read_metrics(run_dir), summary)


def find_runs(paths: Iterable[str | Path]) -> list[Path]:
    """Run directories named, or found below the folders named (any depth), sorted."""
    out: list[Path] = []
    for p in map(Path, paths):
        if not p.exists():
            raise FileNotFoundError(f"'{p}' does not exist")
        if (p / "config.yaml").is_file():
            out.append(p)
        else:
            found = sorted(c.parent for c in p.rglob("config.yaml") if (c.parent / "metrics.csv").exists())
            if not found:
                raise FileNotFoundError(f"no run directories (with config.yaml and metrics.csv) in '{p}'")
            out.extend(found)
    seen: set[Path] = set()
    return [p for p in out if not (p.resolve() in seen or seen.add(p.resolve()))]


@dataclass
class LoadedRun:
    """An agent restored from a run directory, with what it needs to act in its env."""

    run_dir: Path
    checkpoint: Path
    config: RunConfig
    agent: Any
    normalizer: Any
    env: dict[str, Any]
    step: int
    state: dict[str, Any] = field(repr=False, default_factory=dict)

    def env_target(self, trust_env_spec: bool = False) -> Any:
        """What ``evaluation.evaluate`` should build: the dataset's EnvSpec if known, else its id.

        Both come from the checkpoint file, so they are checked like a dataset's
        (:mod:`metaconstraint.data.envspec`): an entry point outside installed, trusted environment
        code is refused unless ``trust_env_spec``."""
        where = f"checkpoint {self.checkpoint}"
        spec = env_spec_from_json(self.env.get("env_spec_json"), where, trust_env_spec)
        if spec is not None:
            return spec
        if not self.env.get("env_id"):
            raise RunError(f"the run in {self.run_dir} does not know its environment (the dataset named none)")
        return check_env_id(str(self.env["env_id"]), where, trust_env_spec)

    def reference(self) -> tuple[float, float] | None:
        lo, hi = self.env.get("ref_min_score"), self.env.get("ref_max_score")
        return None if lo is None or hi is None else (float(lo), float(hi))


def load_run(
    run_dir: str | Path,
    checkpoint: str | Path | int | None = None,
    device: str = "cpu",
    *,
    echo: Callable[[str], None] | None = None,
) -> LoadedRun:
    """The agent of ``run_dir`` at its newest checkpoint, or at ``checkpoint`` (a path or a step).

    The checkpoint's checksum is verified; ``echo`` gets the notice for one without a checksum."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunError(f"run directory '{run_dir}' does not exist")
    check_device(device)  # an unavailable device is not a damaged checkpoint
    if checkpoint is None:
        path = latest_checkpoint(run_dir)
        if path is None:
            raise RunError(f"'{run_dir}' has no checkpoints (checkpoints/step_*.pt); train it first")
    else:
        path = checkpoint_arg(run_dir, checkpoint)
    state = load_checkpoint(path, map_location=device, echo=echo)
    config = run_config_from_dict(state["config"])
    env = state["env"]
    agent = algos.make(
        config.algo, int(env["obs_dim"]), int(env["act_dim"]), float(env["max_action"]), device=device,
        config=dataclasses.replace(config.agent),
    )
    agent.load_state_dict(state["agent"])
    normalizer = ObsNormalizer.from_state_dict(state["normalizer"])
    return LoadedRun(run_dir, path, config, agent, normalizer, env, int(state["step"]), state)
