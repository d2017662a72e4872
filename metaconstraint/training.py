"""The training loop: logging, evaluation schedule, checkpoints, exact resume, signals, divergence guard.

Run directory::

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
skips damaged checkpoints for the newest intact one. A resumed run continues the agent, the
sampler's batch stream, the interval accumulators, the counters and every RNG, so on CPU an
interrupted-and-resumed run ends bit for bit where an uninterrupted one does.
"""

from __future__ import annotations

import csv
import dataclasses
import errno
import fcntl
import hashlib
import json
import math
import os
import pickle
import random
import re
import signal
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
from torch import Tensor

from .config import ConfigError, RunConfig, coefficient_name, dump_yaml, load_yaml, run_config_from_dict

__all__ = [
    "CHECKPOINT_FORMAT",
    "CheckpointError",
    "CheckpointNotice",
    "LoadedRun",
    "RunError",
    "TrainResult",
    "Trainer",
    "TrainingDiverged",
    "checkpoint_digest",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "load_run",
    "save_checkpoint",
]

CHECKPOINT_FORMAT = "metaconstraint.checkpoint/1"
_CKPT_NAME = re.compile(r"^step_(\d+)\.pt$")


class RunError(RuntimeError):
    """A run cannot start or continue; the message says what to do."""


class CheckpointError(RunError):
    """A checkpoint file is missing, damaged, or holds something other than plain data."""


class CheckpointNotice(UserWarning):
    """A checkpoint was loaded without a checksum to verify (written before checksums existed)."""


class TrainingDiverged(RunError):
    """A logged quantity became NaN/Inf; the message names it and the step."""

    def __init__(self, message: str, quantity: str, step: int, value: float):
        super().__init__(message)
        self.quantity, self.step, self.value = quantity, step, value


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
    ckpts = list_checkpoints(run_dir)
    return ckpts[-1][1] if ckpts else None


def checkpoint_path(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"step_{step:08d}.pt"


def _rng_state() -> dict[str, Any]:
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


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


_TMP_NAME = re.compile(r"^\..+\.\d+\.tmp$")  # what save_checkpoint / _atomic_write_text name their temporary files


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


# ----------------------------------------------------------------------------- metrics files
EVAL_COLUMNS = ("eval_score", "eval_score_std", "eval_return", "eval_return_std")


def tensorboard_tag(key: str, coef_key: str | None = None) -> str:
    """The TensorBoard tag of a metrics column: ``eval/score`` for ``eval_score``, ``coef/alpha`` for the
    constraint coefficient, ``time/steps_per_s`` and ``time/wall_s``, ``train/<name>`` for the rest."""
    if key.startswith("eval_"):
        return "eval/" + key[5:]
    if key in ("steps_per_s", "wall_s"):
        return "time/" + key
    if coef_key is not None and key == coef_key:
        return "coef/" + key
    return "train/" + key


def _hparam_value(v: Any) -> Any:
    if isinstance(v, (bool, int, float, str)):
        return v
    return "none" if v is None else json.dumps(v)


class WandbLogger:
    """Weights & Biases, optional (extra ``wandb``): offline unless ``WANDB_MODE`` says otherwise.

    One W&B run per training session, in ``<run_dir>/wandb``, named after the run directory and grouped
    by it (a resumed run adds a session to the group); the config is the flat resolved config, rows are
    logged with the TensorBoard tags (:func:`tensorboard_tag`), and the summary gets the final numbers.
    ``wandb sync <run_dir>/wandb/offline-run-*`` uploads an offline run later."""

    def __init__(self, run_dir: Path, project: str, config: dict[str, Any], coef_key: str | None):
        try:
            import wandb
        except ImportError as err:
            raise RunError("--wandb needs the wandb package: pip install -e '.[wandb]' (or pip install wandb)") from err
        os.environ.setdefault("WANDB_MODE", "offline")  # nothing leaves the machine unless asked
        os.environ.setdefault("WANDB_SILENT", "true")
        self.coef_key = coef_key
        self.run = wandb.init(project=project, dir=str(run_dir), name=run_dir.name, group=run_dir.name,
                              config=config, reinit="create_new")

    def log(self, row: dict[str, Any]) -> None:
        data = {tensorboard_tag(k, self.coef_key): v for k, v in row.items()
                if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}
        self.run.log(data, step=int(row["step"]))

    def finish(self, summary: dict[str, Any] | None = None) -> None:
        if summary:
            for k, v in summary.items():
                if isinstance(v, (int, float, str)) and not isinstance(v, bool):
                    self.run.summary[k] = v
        self.run.finish()


class MetricsLog:
    """``metrics.csv`` + ``metrics.jsonl`` (+ TensorBoard when installed), one row per logged step.

    TensorBoard tags are grouped (:func:`tensorboard_tag`); ``hparams`` (the flat resolved config)
    is written once to the HParams dashboard, with ``eval/score`` and ``eval/return`` as its metrics."""

    def __init__(self, run_dir: Path, metric_names: Iterable[str], tensorboard: bool = True,
                 coef_key: str | None = None, hparams: dict[str, Any] | None = None):
        self.run_dir = run_dir
        self.coef_key = coef_key
        self.columns = ["step", "wall_s", "steps_per_s", *metric_names, *EVAL_COLUMNS]
        self.csv_path = run_dir / "metrics.csv"
        self.jsonl_path = run_dir / "metrics.jsonl"
        self._csv = self._jsonl = None
        self._writer: Any = None
        self._tb: Any = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package

                self._tb = SummaryWriter(str(run_dir / "tensorboard"))
            except Exception:  # not installed: optional
                self._tb = None
        if self._tb is not None and hparams:
            try:
                from torch.utils.tensorboard.summary import hparams as hparams_summary

                flat = {k: _hparam_value(v) for k, v in hparams.items()}
                for summary in hparams_summary(flat, {"eval/score": 0.0, "eval/return": 0.0}):
                    self._tb.file_writer.add_summary(summary)
            except Exception:  # a writer problem must not stop training
                pass

    def truncate_after(self, step: int) -> list[str]:
        """Drop rows past ``step`` (a resumed run rewrites them) and adopt the file's header.

        A row a killed process left half-written (no line end, wrong number of fields, not JSON)
        is dropped too, whatever its step reads as. Returns notes on what was repaired.
        """
        notes = []
        if self.csv_path.exists():
            lines = _complete_lines(self.csv_path, notes)
            parsed = list(csv.reader(lines))
            header = parsed[0] if parsed else []
            rows = []
            for r in parsed[1:]:
                d = dict(zip(header, r))
                if len(r) == len(header) and _int_or_none(d.get("step")) is not None and int(d["step"]) <= step:
                    rows.append(d)
                elif len(r) != len(header):
                    notes.append(f"{self.csv_path.name}: dropped a malformed row ({len(r)} fields, header has {len(header)})")
            if header:
                extra = [c for c in self.columns if c not in header]
                self.columns = header + extra
            _atomic_write_text(self.csv_path, _csv_text(self.columns, rows))
        if self.jsonl_path.exists():
            keep = []
            for line in _complete_lines(self.jsonl_path, notes):
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    notes.append(f"{self.jsonl_path.name}: dropped a line that is not JSON")
                    continue
                if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= step:
                    keep.append(line)
            _atomic_write_text(self.jsonl_path, "".join(k + "\n" for k in keep))
        return notes

    def _open(self) -> None:
        if self._csv is not None:
            return
        new = not self.csv_path.exists() or self.csv_path.stat().st_size == 0
        self._csv = open(self.csv_path, "a", newline="")
        self._writer = csv.DictWriter(self._csv, fieldnames=self.columns, extrasaction="ignore")
        if new:
            self._writer.writeheader()
        self._jsonl = open(self.jsonl_path, "a")

    def write(self, row: dict[str, Any]) -> None:
        self._open()
        self._writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in self.columns})
        self._jsonl.write(json.dumps({k: v for k, v in row.items() if v is not None}) + "\n")
        self._csv.flush()
        self._jsonl.flush()
        if self._tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)) and v is not None:
                    self._tb.add_scalar(tensorboard_tag(k, self.coef_key), v, row["step"])
            self._tb.flush()
        if self.wandb is not None:
            self.wandb.log(row)

    wandb: WandbLogger | None = None

    def close(self) -> None:
        for f in (self._csv, self._jsonl):
            if f is not None:
                f.close()
        self._csv = self._jsonl = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def _complete_lines(path: Path, notes: list[str]) -> list[str]:
    """The non-empty lines of ``path`` that end with a line break (a killed writer's last one may not)."""
    text = path.read_text(errors="replace")
    lines = text.split("\n")
    if lines[-1]:
        notes.append(f"{path.name}: dropped a partial last line left by a killed process")
    return [ln.rstrip("\r") for ln in lines[:-1] if ln.strip()]


def _int_or_none(text: Any) -> int | None:
    try:
        return int(text)
    except (TypeError, ValueError):
        return None


def _csv_text(columns: list[str], rows: list[dict[str, Any]]) -> str:
    import io

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: r.get(k, "") for k in columns})
    return buf.getvalue()


class RunWarning(UserWarning):
    """A run directory's file could not be used and was skipped (the message says which and why)."""


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


# ----------------------------------------------------------------------------- the trainer
@dataclass
class TrainResult:
    """What :meth:`Trainer.train` ended with."""

    status: str  # finished | interrupted | stopped | diverged
    step: int
    run_dir: Path
    summary: dict[str, Any]
    signal: int | None = None
    checkpoint: Path | None = None


@dataclass
class _Env:
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

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _progress_default() -> bool:
    try:
        return sys.stderr.isatty()
    except Exception:
        return False


def _fmt_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def default_run_dir(config: RunConfig, root: str | Path = "runs") -> Path:
    """``runs/<algo>-<dataset>-seed<seed>-<YYYYmmdd-HHMMSS>``."""
    from .config import dataset_key

    slug = re.sub(r"[^\w.-]+", "_", dataset_key(config.dataset)) or "data"
    return Path(root) / f"{config.algo}-{slug}-seed{config.seed}-{time.strftime('%Y%m%d-%H%M%S')}"


class Trainer:
    """Trains one agent on one dataset into a run directory.

    ``Trainer(config, run_dir).train()`` starts a new run; ``Trainer.resume(run_dir).train()``
    continues one from its newest checkpoint. ``progress``: a tqdm bar (default: only when
    stderr is a terminal); ``echo``: where status lines go (``None``: nowhere).
    """

    def __init__(
        self,
        config: RunConfig,
        run_dir: str | Path,
        *,
        progress: bool | None = None,
        echo: Callable[[str], None] | None = print,
        plots: bool = True,
        tensorboard: bool = True,
        trust_env_spec: bool = False,
        wandb: str | None = None,
    ):
        self.config = config
        self.trust_env_spec = trust_env_spec
        self.run_dir = Path(run_dir)
        self.progress = _progress_default() if progress is None else progress
        self._echo = echo
        self.make_plots = plots
        self.tensorboard = tensorboard
        self.wandb_project = wandb
        self.coef_key = coefficient_name(config.algo)
        self.step = 0
        self.wall_s = 0.0
        self.evals: list[dict[str, Any]] = []  # step, score, return per evaluation
        self.coef_trace: dict[str, Any] = {}
        self._acc: dict[str, list[Any]] = {}  # name -> [sum tensor, count]
        self._last_row_step = 0
        self._last_row_wall = 0.0
        self._resumed_from: Path | None = None
        self._resuming = False  # set by resume(); the checkpoint is chosen once the run is locked
        self._resume_choice: str | Path | None = None
        self._pending_row: int | None = None  # a step whose row (and evaluation) is still to be written
        self.warnings: list[str] = []
        self._stop_signal: int | None = None
        self._ready = False

    # -------------------------------------------------------------- building
    @classmethod
    def resume(
        cls, run_dir: str | Path, *, device: str | None = None, checkpoint: str | Path | int | None = None, **kw: Any
    ) -> "Trainer":
        """A trainer that continues the run in ``run_dir`` from its newest intact checkpoint, or from
        ``checkpoint`` (a path or a step number). Damaged newer checkpoints are skipped (and moved
        aside to ``*.pt.damaged``) with a message. A run stopped before its first checkpoint starts
        over from step 0 with its config.yaml."""
        run_dir = Path(run_dir)
        cfg_path = run_dir / "config.yaml"
        if not cfg_path.is_file():
            raise RunError(f"'{run_dir}' is not a run directory (no config.yaml); nothing to resume")
        data = load_yaml(cfg_path)
        if device is not None:
            started = str(data.get("device", "cpu"))
            if torch.device(device).type != torch.device(started).type:
                raise ConfigError(
                    f"the run in {run_dir} started on {started}; it resumes on the same kind of device (the data "
                    f"sampler's random stream is device-specific): drop --device {device} or use --device {started}"
                )
            data["device"] = device
        config = run_config_from_dict(data)
        trainer = cls(config, run_dir, **kw)
        trainer._resuming = True
        trainer._resume_choice = checkpoint
        return trainer

    def _resume_state(self) -> dict[str, Any] | None:
        """Load the chosen checkpoint, else the newest intact one (damaged newer ones moved aside);
        None when the run has no checkpoint at all."""
        choice = self._resume_choice
        if choice is not None:
            path = _checkpoint_arg(self.run_dir, choice)
            state = load_checkpoint(path, map_location=self.device, echo=self.echo)
            self._resumed_from = path
            return state
        damaged: list[tuple[Path, CheckpointError]] = []
        for _, path in reversed(list_checkpoints(self.run_dir)):
            try:
                state = load_checkpoint(path, map_location=self.device, echo=self.echo)
            except CheckpointError as err:
                damaged.append((path, err))
                continue
            for bad, err in damaged:
                aside = bad.with_name(bad.name + ".damaged")
                os.replace(bad, aside)  # kept for inspection, no longer listed as a checkpoint
                self.echo(f"warning: {err}; moved it aside to {aside.name}")
            if damaged:
                self.echo(f"resuming from the newest intact checkpoint instead: {path.name}")
            self._resumed_from = path
            return state
        if not damaged:
            return None
        detail = "; ".join(str(err) for _, err in damaged)
        raise RunError(
            f"no intact checkpoint to resume {self.run_dir} from: {detail}. Start it again with metaconstraint train "
            f"--config {self.run_dir / 'config.yaml'} --run-dir NEW_DIR"
        )

    def echo(self, text: str) -> None:
        if self._echo is None:
            return
        if self._bar is not None and not self._bar.disable:
            self._bar.write(text)  # above the progress bar
        else:
            self._echo(text)

    _bar: Any = None

    def setup(self) -> None:
        """Check the device and the algorithm settings, load the data, build sampler and agent, and
        build the evaluation env once (reset with the evaluation seed): everything the run uses
        later fails here, before step 1."""
        if self._ready:
            return
        from . import algos
        from .data import ObsNormalizer, load
        from .data.sampler import Sampler

        c = self.config
        self.device = check_device(c.device)
        # Build a throwaway agent on a 1-d problem first: bad algorithm settings fail before the data loads.
        try:
            algos.make(c.algo, 1, 1, 1.0, device="cpu", config=dataclasses.replace(c.agent))
        except (ValueError, KeyError, TypeError) as err:
            raise ConfigError(f"{c.algo} settings: {err}") from err
        t0 = time.perf_counter()
        env_id = c.env_id
        if env_id is not None:  # config.yaml is a file: its env id names trusted code unless told otherwise
            from .data.envspec import check_env_id

            env_id = check_env_id(env_id, "the run's env_id setting", self.trust_env_spec)
        data = load(c.dataset, env_id=env_id, trust_env_spec=self.trust_env_spec)
        if c.ref_min_score is not None:
            data.ref_min_score, data.ref_max_score = float(c.ref_min_score), float(c.ref_max_score)
            data.notes.append(f"reference scores {c.ref_min_score} / {c.ref_max_score} from the run's settings")
        self.data = data
        from .evaluation import check_eval_env

        try:
            check_eval_env(data, c.resolved_eval_seed(), data.obs_dim, data.act_dim, trust_env_spec=self.trust_env_spec)
        except ValueError as err:
            raise RunError(
                f"dataset {c.dataset}: {err}. Training would fail at its first evaluation, so it does not start "
                "(a dataset names its env by an env_id attribute (HDF5/npz) or env_spec (Minari metadata); "
                "name it with --env-id, e.g. --env-id Hopper-v5)"
            ) from err
        self.normalizer = ObsNormalizer.from_transitions(data) if c.normalize_obs else ObsNormalizer.identity(data.obs_dim)
        sampler_seed = int(np.random.SeedSequence([c.seed, 0x5A4D]).generate_state(1)[0])
        self.sampler = Sampler(data, c.batch_size, self.device, self.normalizer, c.reward_scale, seed=sampler_seed)
        self.agent = algos.make(
            c.algo, data.obs_dim, data.act_dim, data.max_action, device=self.device, config=dataclasses.replace(c.agent)
        )
        spec_json = None
        if data.env_spec is not None:
            try:
                spec_json = data.env_spec.to_json()
            except Exception:
                spec_json = None
        self.env = _Env(
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
        self.load_s = time.perf_counter() - t0
        returns = data.episode_returns()
        self.dataset_return = float(returns.mean()) if returns.size else None
        self.dataset_score = (
            None if self.dataset_return is None or data.ref_min_score is None or data.ref_max_score is None
            else 100.0 * (self.dataset_return - data.ref_min_score) / (data.ref_max_score - data.ref_min_score)
        )
        self.coef_start = _coefficient_value(self.agent)
        self._ready = True

    # -------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs (plain data: ``weights_only`` loadable)."""
        return {
            "format": CHECKPOINT_FORMAT,
            "step": self.step,
            "algo": self.config.algo,
            "config": self.config.to_dict(),
            "env": self.env.as_dict(),
            "agent": self.agent.state_dict(),
            "sampler": self.sampler.state_dict(),
            "normalizer": self.normalizer.state_dict(),
            "rng": _rng_state(),
            "trainer": {
                "wall_s": float(self.wall_s),
                "acc": {k: [v[0].detach().clone(), int(v[1])] for k, v in self._acc.items()},
                "evals": list(self.evals),
                "coef_start": self.coef_start,
                "coef_trace": dict(self.coef_trace),
                "last_row_step": self._last_row_step,
                "last_row_wall": float(self._last_row_wall),
                "pending_row": self._pending_row,
                "warnings": list(self.warnings),
            },
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = dict(state["config"])
        try:  # a checkpoint written before a setting existed lacks it: compare with that setting's default
            saved = run_config_from_dict(saved).to_dict()
        except ConfigError:
            pass
        ours = self.config.to_dict()
        saved.pop("device", None)
        ours.pop("device", None)
        if saved != ours:
            diff = sorted(k for k in set(saved) | set(ours) if saved.get(k) != ours.get(k))
            raise RunError(
                f"config.yaml differs from the checkpoint's config in {diff}; a resumed run keeps the settings it "
                "started with (restore config.yaml, or start a new run with --config)"
            )
        env = state["env"]
        for key in ("dataset_size", "obs_dim", "act_dim"):
            if int(env[key]) != int(getattr(self.env, key)):
                raise RunError(
                    f"the dataset {self.config.dataset} has changed since the run started: {key} was {env[key]} and is "
                    f"{getattr(self.env, key)} now. A resumed run must see the same data; restore the dataset or start "
                    "a new run"
                )
        self.agent.load_state_dict(state["agent"])
        self.sampler.load_state_dict(state["sampler"])
        self.normalizer.load_state_dict(state["normalizer"])
        _set_rng_state(state["rng"])
        t = state["trainer"]
        self.step = int(state["step"])
        self.wall_s = float(t["wall_s"])
        self._acc = {k: [v[0].to(self.device), int(v[1])] for k, v in t["acc"].items()}
        self.evals = list(t["evals"])
        self.coef_start = t["coef_start"]
        self.coef_trace = dict(t["coef_trace"])
        self._last_row_step = int(t["last_row_step"])
        self._last_row_wall = float(t["last_row_wall"])
        self._pending_row = t.get("pending_row")
        self.warnings = list(t.get("warnings", []))

    def save(self) -> Path:
        """Checkpoint the current step and keep only the newest ``keep_checkpoints`` files.

        A failed write (e.g. a full disk) raises a RunError; the previous checkpoints stay intact."""
        target = checkpoint_path(self.run_dir, self.step)
        try:
            path = save_checkpoint(self.state_dict(), target)
        except OSError as err:
            prev = self.last_checkpoint or latest_checkpoint(self.run_dir)
            raise RunError(
                f"could not write the checkpoint {target} at step {self.step}: {err.strerror or err}. "
                + (f"The previous checkpoint {prev} is intact" if prev else "No earlier checkpoint exists")
                + f"; free the space (or fix the cause), then continue with metaconstraint train --resume {self.run_dir}"
            ) from err
        for _, old in list_checkpoints(self.run_dir)[: -self.config.keep_checkpoints]:
            old.unlink(missing_ok=True)
        self.last_checkpoint = path
        return path

    last_checkpoint: Path | None = None

    # -------------------------------------------------------------- signals
    def _install_signals(self) -> dict[int, Any]:
        if threading.current_thread() is not threading.main_thread():
            return {}
        old: dict[int, Any] = {}

        def handler(signum: int, frame: Any) -> None:
            if self._stop_signal is not None:  # a second signal: stop now
                for s, h in old.items():
                    signal.signal(s, h)
                raise KeyboardInterrupt
            self._stop_signal = signum
            self.echo(
                f"\n{signal.Signals(signum).name} received: finishing the current update and writing a checkpoint "
                "(send it again to abort without one)"
            )

        for s in (signal.SIGINT, signal.SIGTERM):
            old[s] = signal.signal(s, handler)
        return old

    # -------------------------------------------------------------- the loop
    def train(self, stop_after: int | None = None) -> TrainResult:
        """Train to ``config.steps`` (or stop, checkpointed, after ``stop_after`` total steps).

        The run directory is locked first (one writer per directory); a bad setting, dataset or
        evaluation env fails before anything else is written there.
        """
        created = self._open_run_dir()
        try:
            try:
                self._check_run_dir()
                self.setup()
            except BaseException:
                if created:  # nothing but the lock file was written: leave no trace
                    self._lock.path.unlink(missing_ok=True)
                    self._lock.release()
                    for folder in created:
                        try:
                            folder.rmdir()
                        except OSError:
                            break
                raise
            return self._train_locked(stop_after)
        finally:
            self._lock.release()

    def _open_run_dir(self) -> list[Path]:
        """Create the run directory if needed and lock it; returns the folders created here, deepest first."""
        created = [p for p in (self.run_dir, *self.run_dir.parents) if not p.exists()]
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise RunError(f"cannot create the run directory '{self.run_dir}': {err.strerror or err}") from err
        self._lock = RunLock(self.run_dir).acquire()
        for p in remove_temp_files(self.run_dir):
            self.echo(f"removed {p.name}, a temporary file left by a killed write")
        return created

    def _train_locked(self, stop_after: int | None) -> TrainResult:
        c = self.config
        try:
            (self.run_dir / "checkpoints").mkdir(exist_ok=True)
        except OSError as err:
            raise RunError(f"cannot write to the run directory '{self.run_dir}': {err.strerror or err}") from err
        metric_names = list(getattr(self.agent, "metric_names", ()) or ())
        from .plotting import flat_settings

        self.metrics = MetricsLog(self.run_dir, metric_names, tensorboard=self.tensorboard, coef_key=self.coef_key,
                                  hparams=flat_settings(c.to_dict()))
        if self.wandb_project:
            self.metrics.wandb = WandbLogger(self.run_dir, self.wandb_project, flat_settings(c.to_dict()), self.coef_key)
        state = self._resume_state() if self._resuming else None
        if self._resuming:
            if state is not None:
                self.load_state_dict(state)
            # a run started over (no checkpoint) keeps no rows at all, not even its step-0 evaluation
            for note in self.metrics.truncate_after(self.step if state is not None else -1):
                self.echo(f"repaired {note}")
            if state is None:
                self.echo(f"{self.run_dir} was stopped before its first checkpoint: starting it over from step 0")
            else:
                self.echo(f"resuming {self.run_dir} from step {self.step} ({self._resumed_from.name})")
            if self.step >= c.steps and self._pending_row is None:
                self.echo(f"the run already finished at step {self.step}; nothing to do")
                summary = self._write_summary("finished")
                self.metrics.close()
                return TrainResult("finished", self.step, self.run_dir, summary, checkpoint=self._resumed_from)
        else:
            dump_yaml(c, self.run_dir / "config.yaml")
            self.echo(
                f"training {c.algo} on {c.dataset} ({self.env.dataset_size} transitions, env {self.env.env_id}) for "
                f"{c.steps} steps, preset {c.preset}, device {self.device}; run directory {self.run_dir}"
            )
        if stop_after is not None and stop_after <= self.step:
            raise ConfigError(f"--stop-after {stop_after} is not past the current step {self.step}")
        end = c.steps if stop_after is None else min(c.steps, stop_after)

        from tqdm.auto import tqdm

        old_handlers = self._install_signals()
        self._bar = tqdm(
            total=c.steps, initial=self.step, disable=not self.progress, dynamic_ncols=True, mininterval=0.5,
            desc=f"{c.algo}", unit="step", file=sys.stderr,
        )
        status = "finished"
        session_start = time.perf_counter()
        wall_base = self.wall_s
        try:
            agent, sampler = self.agent, self.sampler
            if self._pending_row is not None:  # a row whose evaluation a signal or an error cut short
                if self._write_row(self._pending_row, evaluate=True):
                    status = "interrupted"
                else:
                    self.save()
            elif self.step == 0 and c.eval_every > 0 and not self.evals:
                # the untrained policy, so curves start where training does (no RNG of the run is used)
                if self._write_row(0, evaluate=True):
                    status = "interrupted"
            while self.step < end and status != "interrupted":
                batch = sampler.sample()
                step = self.step + 1
                try:
                    logs = agent.update(batch)
                    agent.check_finite()
                except FloatingPointError as err:
                    self.step = step
                    name, value, detail = _parse_agent_error(str(err))
                    raise self._diverged(name, step, value, detail) from err
                self.step = step
                self._guard(logs, step)
                self._accumulate(logs)
                self._bar.update(1)
                self.wall_s = wall_base + time.perf_counter() - session_start
                is_eval = step == c.steps or (c.eval_every > 0 and step % c.eval_every == 0)
                if is_eval or step % c.log_every == 0 or step == end:
                    if self._write_row(step, evaluate=is_eval):
                        status = "interrupted"  # the signal came during the evaluation: checkpoint written
                        break
                    self.wall_s = wall_base + time.perf_counter() - session_start
                due = c.checkpoint_every > 0 and step % c.checkpoint_every == 0
                stopping = self._stop_signal is not None or step == end
                if due or stopping:
                    self.save()
                if self._stop_signal is not None:
                    status = "interrupted"
                    break
            if status == "finished" and self.step < c.steps:
                status = "stopped"
        except (TrainingDiverged, RunError, OSError) as caught:
            err = caught
            self.wall_s = wall_base + time.perf_counter() - session_start
            self._bar.close()
            self._bar = None
            self.metrics.close()
            if isinstance(err, OSError):  # a metrics or summary write failed (disk full, ...)
                err = RunError(
                    f"writing to {self.run_dir} failed at step {self.step}: {err}; the newest checkpoint "
                    f"{self.last_checkpoint or latest_checkpoint(self.run_dir)} is intact; fix the cause, then continue "
                    f"with metaconstraint train --resume {self.run_dir}"
                )
            if not isinstance(err, TrainingDiverged):
                self.failed_info = {"step": self.step, "message": str(err)}
            try:
                self._finish_wandb(self._finish_outputs("diverged" if isinstance(err, TrainingDiverged) else "failed"))
            except OSError as write_err:
                self.echo(f"warning: could not write summary.json: {write_err}")
            if err is caught:
                raise
            raise err from caught
        finally:
            for s, h in old_handlers.items():
                signal.signal(s, h)
            if self._bar is not None:
                self._bar.close()
                self._bar = None
            self.metrics.close()
        summary = self._finish_outputs(status)
        self._finish_wandb(summary)
        return TrainResult(status, self.step, self.run_dir, summary, signal=self._stop_signal, checkpoint=self.last_checkpoint)

    def _finish_wandb(self, summary: dict[str, Any]) -> None:
        wb = getattr(getattr(self, "metrics", None), "wandb", None)
        if wb is not None:
            self.metrics.wandb = None
            try:
                wb.finish(summary)
            except Exception as err:  # the run's own files are written; W&B is extra
                self.echo(f"warning: could not finish the W&B run: {type(err).__name__}: {err}")

    def _write_row(self, step: int, evaluate: bool) -> bool:
        """Log ``step``'s row. True if a signal stopped its evaluation: the checkpoint is then written
        with the row pending (a resumed run evaluates it again). An evaluation that fails writes the
        checkpoint first too, then raises a RunError."""
        from .evaluation import EvaluationInterrupted

        try:
            self._log_row(step, evaluate)
        except EvaluationInterrupted:
            self._pending_row = step
            self.save()
            return True
        except _EvaluationFailed as err:
            self._pending_row = step
            path = self.save()
            raise RunError(
                f"the evaluation at step {step} failed: {err}. The checkpoint {path} and summary.json were written "
                f"first; fix the cause, then continue with metaconstraint train --resume {self.run_dir} (it evaluates "
                "that step again)"
            ) from err.__cause__
        self._pending_row = None
        return False

    failed_info: dict[str, Any] | None = None

    def _check_run_dir(self) -> None:
        if not self._resuming:
            if (self.run_dir / "config.yaml").exists() or list_checkpoints(self.run_dir):
                raise RunError(
                    f"'{self.run_dir}' already holds a run; continue it with `metaconstraint train --resume "
                    f"{self.run_dir}` or choose another --run-dir"
                )

    # -------------------------------------------------------------- per step
    def _guard(self, logs: dict[str, Tensor], step: int) -> None:
        """Stop at the first NaN/Inf logged quantity (one check per step, no float conversions)."""
        if not logs:
            return
        values = list(logs.values())
        if bool(torch.isfinite(torch.stack([v.detach().reshape(()).float() for v in values])).all()):
            return
        for name, v in logs.items():
            if not bool(torch.isfinite(v).all()):
                raise self._diverged(name, step, float(v))

    def _diverged(self, name: str, step: int, value: float, detail: str | None = None) -> TrainingDiverged:
        last = self.last_checkpoint or latest_checkpoint(self.run_dir)
        where = (
            f"the last good checkpoint is {last} (written before the divergence, left intact)"
            if last is not None
            else "no checkpoint was written before it"
        )
        msg = (
            f"training diverged: {name} is {value} at step {step}"
            + (f" ({detail})" if detail else "")
            + f"; {where}. Lower the learning rates or check the dataset's rewards, then start a new run."
        )
        self.diverged_info = {"quantity": name, "step": step, "value": value, "message": msg}
        return TrainingDiverged(msg, name, step, value)

    diverged_info: dict[str, Any] | None = None

    def _accumulate(self, logs: dict[str, Tensor]) -> None:
        acc = self._acc
        for k, v in logs.items():
            slot = acc.get(k)
            if slot is None:
                acc[k] = [v.detach().clone(), 1]
            else:
                slot[0] = slot[0] + v.detach()
                slot[1] += 1

    def _log_row(self, step: int, evaluate: bool) -> None:
        """Means over the interval (floats now, not before), an evaluation if due, one row written."""
        row: dict[str, Any] = {"step": step, "wall_s": round(self.wall_s, 3)}
        dt = self.wall_s - self._last_row_wall
        row["steps_per_s"] = round((step - self._last_row_step) / dt, 2) if dt > 0 else None
        for k, (total, n) in self._acc.items():
            row[k] = float(total) / n
        if self.coef_key in row:
            self._trace_coef(step, row[self.coef_key])  # the same value again if this row is redone
        if evaluate:
            row.update(self._evaluate(step))  # may raise: the interval's sums are kept for the redo
        self._acc = {}
        self.metrics.write(row)
        self._last_row_step, self._last_row_wall = step, self.wall_s
        post = {}
        if self.coef_key in row:
            post[self.coef_key] = f"{row[self.coef_key]:.3g}"
        if "q_mean" in row:
            post["Q"] = f"{row['q_mean']:.3g}"
        if self.evals:
            last = self.evals[-1]
            post["score"] = f"{last['score']:.1f}" if last.get("score") is not None else f"R {last['return']:.1f}"
        if self._bar is not None and post:
            self._bar.set_postfix(post, refresh=False)

    def _trace_coef(self, step: int, value: float) -> None:
        t = self.coef_trace
        if not t:
            t.update(min=value, min_step=step, max=value, max_step=step)
        if value < t["min"]:
            t["min"], t["min_step"] = value, step
        if value > t["max"]:
            t["max"], t["max_step"] = value, step
        t["last"], t["last_step"] = value, step
        self._check_saturation(value, step)

    COEF_SATURATION = (1e-3, 1e3)  # a learned coefficient outside this range has saturated

    def _check_saturation(self, value: float | None, step: int) -> None:
        """Warn once per run when a learned coefficient is driven to ~0 or to a huge value."""
        lo, hi = self.COEF_SATURATION
        start = getattr(self, "coef_start", None)
        if value is None or not math.isfinite(value) or lo < value < hi or start is None or value == start:
            return  # in range, or a fixed coefficient (it never moves from its start)
        if any(w.startswith(f"{self.coef_key} saturated") for w in self.warnings):
            return
        what = "near 0: the term it weighs is switched off" if value <= lo else "huge: the term it weighs dominates"
        msg = (
            f"{self.coef_key} saturated at step {step}: {value:.3g} ({what}); the coefficient's learning rate is "
            "probably too high for this run"
        )
        self.warnings.append(msg)
        self.echo(f"warning: {msg}")

    def evaluate(self, episodes: int | None = None, seed: int | None = None) -> dict[str, Any]:
        """Roll the current policy out in the dataset's env (``evaluation.evaluate``)."""
        c = self.config
        n = c.eval_episodes if episodes is None else episodes
        ref = (self.env.ref_min_score, self.env.ref_max_score) if self.env.ref_min_score is not None else None
        return evaluate_policy(
            self.agent, self.data, episodes=n, seed=c.resolved_eval_seed() if seed is None else seed,
            normalizer=self.normalizer, n_envs=min(10, n), ref=ref, device=self.device,
        )

    def _evaluate(self, step: int) -> dict[str, Any]:
        from .evaluation import EvaluationInterrupted

        c = self.config
        ref = (self.env.ref_min_score, self.env.ref_max_score) if self.env.ref_min_score is not None else None
        try:
            res = evaluate_policy(
                self.agent, self.data, episodes=c.eval_episodes, seed=c.resolved_eval_seed(), normalizer=self.normalizer,
                n_envs=min(10, c.eval_episodes), ref=ref, device=self.device,
                should_stop=lambda: self._stop_signal is not None, progress=self.progress,
            )
        except EvaluationInterrupted:
            raise
        except Exception as err:
            raise _EvaluationFailed(f"{type(err).__name__}: {err}") from err
        entry = {"step": step, "score": res["score_mean"], "score_std": res["score_std"], "return": res["return_mean"],
                 "return_std": res["return_std"]}
        self.evals.append(entry)
        coef = self.coef_trace.get("last")
        score = f"score {res['score_mean']:.1f} ± {res['score_std']:.1f}  " if res["score_mean"] is not None else ""
        self.echo(
            f"step {step}/{self.config.steps}  {score}return {res['return_mean']:.1f}"
            + (f"  {self.coef_key} {coef:.3g}" if coef is not None else "")
            + f"  ({_fmt_duration(self.wall_s)})"
        )
        return {
            "eval_score": res["score_mean"],
            "eval_score_std": res["score_std"],
            "eval_return": res["return_mean"],
            "eval_return_std": res["return_std"],
        }

    # -------------------------------------------------------------- outputs
    def _finish_outputs(self, status: str) -> dict[str, Any]:
        plots: list[str] = []
        self._write_summary(status)  # the plots read the coefficient's start from it
        if self.make_plots:
            try:
                from .plotting import plot_run

                plots = [str(p) for p in plot_run(self.run_dir)]
            except Exception as err:  # a plotting problem must not lose the run's results
                self.echo(f"warning: could not draw the plots: {type(err).__name__}: {err}")
        return self._write_summary(status, plots)

    _env_info: dict[str, Any] | None = None

    def _environment(self) -> dict[str, Any] | None:
        if self._env_info is None:
            try:
                self._env_info = run_environment(getattr(self, "device", self.config.device))
            except Exception as err:  # never lose a summary over this
                self._env_info = {"error": f"{type(err).__name__}: {err}"}
        return self._env_info

    def _write_summary(self, status: str, plots: list[str] | None = None) -> dict[str, Any]:
        c = self.config
        final = self.evals[-1] if self.evals else None
        scored = [e for e in self.evals if e.get("score") is not None]
        best = max(scored, key=lambda e: e["score"]) if scored else None
        coef_end = _coefficient_value(self.agent)
        trace = self.coef_trace
        # (value, step) candidates: the start, the logged interval means' extremes, the exact end value
        points = [(v, st) for v, st in ((self.coef_start, 0), (trace.get("min"), trace.get("min_step")),
                                        (trace.get("max"), trace.get("max_step")), (coef_end, self.step)) if v is not None]
        self._check_saturation(coef_end, self.step)
        lo = min(points, key=lambda p: p[0]) if points else (None, None)
        hi = max(points, key=lambda p: p[0]) if points else (None, None)
        summary = {
            "status": status,
            "algo": c.algo,
            "dataset": c.dataset,
            "env_id": self.env.env_id,
            "seed": c.seed,
            "steps": c.steps,
            "step": self.step,
            "final_score": None if final is None else final.get("score"),
            "final_score_std": None if final is None else final.get("score_std"),
            "final_return": None if final is None else final.get("return"),
            "final_eval_step": None if final is None else final["step"],
            "best_score": None if best is None else best["score"],
            "dataset_return": getattr(self, "dataset_return", None),
            "dataset_score": getattr(self, "dataset_score", None),
            "best_score_step": None if best is None else best["step"],
            "coefficient": self.coef_key,
            "coef_start": self.coef_start,
            "coef_min": lo[0],
            "coef_max": hi[0],
            "coef_min_step": lo[1],
            "coef_max_step": hi[1],
            "coef_end": coef_end,
            "wall_s": round(self.wall_s, 2),
            "steps_per_s": round(self.step / self.wall_s, 2) if self.wall_s > 0 else None,
            "data_load_s": round(getattr(self, "load_s", 0.0), 2),
            "checkpoint": None if latest_checkpoint(self.run_dir) is None else str(latest_checkpoint(self.run_dir)),
            "plots": plots or [],
            "evals": self.evals,
            "warnings": list(self.warnings),
            "environment": self._environment(),
        }
        if self.diverged_info is not None:
            summary["error"] = self.diverged_info
        elif self.failed_info is not None:
            summary["error"] = self.failed_info
        _atomic_write_text(self.run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
        return summary


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
    info: dict[str, Any] = {
        "versions": {"metaconstraint": _version("metaconstraint"), "torch": torch.__version__,
                     "gymnasium": _version("gymnasium"), "minari": _version("minari"), "numpy": np.__version__,
                     "python": platform.python_version()},
        "git": git_commit(),
        "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
    }
    return info


class _EvaluationFailed(RunError):
    """An evaluation raised; the trainer checkpoints before reporting it."""


def evaluate_policy(*args: Any, **kw: Any) -> dict[str, Any]:
    from .evaluation import evaluate

    return evaluate(*args, **kw)


def _coefficient_value(agent: Any) -> float | None:
    con = getattr(agent, "constraint", None)
    if con is not None and hasattr(con, "value"):
        try:
            return float(con.value())
        except Exception:
            pass
    return None


def _parse_agent_error(text: str) -> tuple[str, float, str | None]:
    """``("critic loss", inf, "the batch is finite, ...")`` from an agent's FloatingPointError message."""
    m = re.match(r"\s*(.+?) is (nan|inf|-inf)\b[^:]*:?\s*(.*)", text, re.S)
    if not m:
        return "a loss", float("nan"), text
    return m.group(1), float(m.group(2)), (m.group(3).strip() or None)


# ----------------------------------------------------------------------------- loading a run
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
        from .data.envspec import check_env_id, env_spec_from_json

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


def _checkpoint_arg(run_dir: Path, checkpoint: str | Path | int) -> Path:
    """A ``--checkpoint`` value (a step number or a file) as the checkpoint's path."""
    if isinstance(checkpoint, int) or (isinstance(checkpoint, str) and checkpoint.isdigit()):
        path = checkpoint_path(run_dir, int(checkpoint))
        if not path.is_file():
            have = [s for s, _ in list_checkpoints(run_dir)]
            raise RunError(f"'{run_dir}' has no checkpoint for step {int(checkpoint)}; it has steps {have}")
        return path
    return Path(checkpoint)


def load_run(
    run_dir: str | Path,
    checkpoint: str | Path | int | None = None,
    device: str = "cpu",
    *,
    echo: Callable[[str], None] | None = None,
) -> LoadedRun:
    """The agent of ``run_dir`` at its newest checkpoint, or at ``checkpoint`` (a path or a step).

    The checkpoint's checksum is verified; ``echo`` gets the notice for one without a checksum."""
    from . import algos
    from .data import ObsNormalizer

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunError(f"run directory '{run_dir}' does not exist")
    check_device(device)  # an unavailable device is not a damaged checkpoint
    if checkpoint is None:
        path = latest_checkpoint(run_dir)
        if path is None:
            raise RunError(f"'{run_dir}' has no checkpoints (checkpoints/step_*.pt); train it first")
    else:
        path = _checkpoint_arg(run_dir, checkpoint)
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
