"""A run's metrics: the rows of ``metrics.csv`` / ``metrics.jsonl`` and their optional TensorBoard and
Weights & Biases sinks, the interval means a row is made of, and the constraint coefficient's trace."""

from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path
from typing import Any, Callable, Iterable

from torch import Tensor

from .rundir import RunError, atomic_write_text

__all__ = [
    "EVAL_COLUMNS", "CoefficientTrace", "IntervalMeans", "MetricsLog", "RunRecord", "WandbLogger", "tensorboard_tag",
]

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
        self.wandb: WandbLogger | None = None  # set by the trainer when asked for
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
            atomic_write_text(self.csv_path, _csv_text(self.columns, rows))
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
            atomic_write_text(self.jsonl_path, "".join(k + "\n" for k in keep))
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
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: r.get(k, "") for k in columns})
    return buf.getvalue()


class IntervalMeans:
    """The logged 0-dim tensors summed over a row's interval, turned into floats only when the row is
    written (no host read per step). Its state is ``{name: [sum, count]}``."""

    def __init__(self) -> None:
        self.sums: dict[str, list[Any]] = {}

    def add(self, logs: dict[str, Tensor]) -> None:
        for k, v in logs.items():
            slot = self.sums.get(k)
            if slot is None:
                self.sums[k] = [v.detach().clone(), 1]
            else:
                slot[0] = slot[0] + v.detach()
                slot[1] += 1

    def means(self) -> dict[str, float]:
        return {k: float(total) / n for k, (total, n) in self.sums.items()}

    def clear(self) -> None:
        self.sums = {}

    def state_dict(self) -> dict[str, list[Any]]:
        return {k: [v[0].detach().clone(), int(v[1])] for k, v in self.sums.items()}

    def load_state_dict(self, state: dict[str, list[Any]], device: Any) -> None:
        self.sums = {k: [v[0].to(device), int(v[1])] for k, v in state.items()}


class CoefficientTrace:
    """The constraint coefficient over a run: its start, the extremes and last value of its logged
    interval means, and a warning (once per run) when a learned coefficient saturates."""

    SATURATION = (1e-3, 1e3)  # a learned coefficient outside this range has saturated

    def __init__(self, key: str, start: float | None, echo: Callable[[str], None]):
        self.key, self.start, self.echo = key, start, echo
        self.points: dict[str, Any] = {}  # min, min_step, max, max_step, last, last_step
        self.warnings: list[str] = []

    @property
    def last(self) -> float | None:
        return self.points.get("last")

    def add(self, step: int, value: float) -> None:
        t = self.points
        if not t:
            t.update(min=value, min_step=step, max=value, max_step=step)
        if value < t["min"]:
            t["min"], t["min_step"] = value, step
        if value > t["max"]:
            t["max"], t["max_step"] = value, step
        t["last"], t["last_step"] = value, step
        self.check_saturation(value, step)

    def check_saturation(self, value: float | None, step: int) -> None:
        """Warn once per run when a learned coefficient is driven to ~0 or to a huge value."""
        lo, hi = self.SATURATION
        if value is None or not math.isfinite(value) or lo < value < hi or self.start is None or value == self.start:
            return  # in range, or a fixed coefficient (it never moves from its start)
        if any(w.startswith(f"{self.key} saturated") for w in self.warnings):
            return
        what = "near 0: the term it weighs is switched off" if value <= lo else "huge: the term it weighs dominates"
        msg = (
            f"{self.key} saturated at step {step}: {value:.3g} ({what}); the coefficient's learning rate is "
            "probably too high for this run"
        )
        self.warnings.append(msg)
        self.echo(f"warning: {msg}")

    def summary(self, end: float | None, step: int) -> dict[str, Any]:
        """summary.json's coefficient entries, with ``end`` the exact value at ``step``."""
        t = self.points
        # (value, step) candidates: the start, the logged interval means' extremes, the exact end value
        points = [(v, st) for v, st in ((self.start, 0), (t.get("min"), t.get("min_step")),
                                        (t.get("max"), t.get("max_step")), (end, step)) if v is not None]
        self.check_saturation(end, step)
        lo = min(points, key=lambda p: p[0]) if points else (None, None)
        hi = max(points, key=lambda p: p[0]) if points else (None, None)
        return {"coefficient": self.key, "coef_start": self.start, "coef_min": lo[0], "coef_max": hi[0],
                "coef_min_step": lo[1], "coef_max_step": hi[1], "coef_end": end}


class RunRecord:
    """What a run has recorded so far: the current row's interval means, the evaluations, the
    coefficient's trace, when the last row was written, and a row still to be written (its evaluation
    cut short by a signal or an error). Its state is the checkpoint's ``trainer`` entry."""

    def __init__(self, coef: CoefficientTrace):
        self.means = IntervalMeans()
        self.coef = coef
        self.evals: list[dict[str, Any]] = []  # step, score, return per evaluation
        self.last_row_step, self.last_row_wall = 0, 0.0
        self.pending_row: int | None = None

    def row(self, step: int, wall_s: float) -> dict[str, Any]:
        """``step``'s row: the interval's means (floats now, not before) and the speed since the last row."""
        row: dict[str, Any] = {"step": step, "wall_s": round(wall_s, 3)}
        dt = wall_s - self.last_row_wall
        row["steps_per_s"] = round((step - self.last_row_step) / dt, 2) if dt > 0 else None
        row.update(self.means.means())
        if self.coef.key in row:
            self.coef.add(step, row[self.coef.key])  # the same value again if this row is redone
        return row

    def close_row(self, step: int, wall_s: float) -> None:
        """The row of ``step`` is written: the next interval starts."""
        self.means.clear()
        self.last_row_step, self.last_row_wall = step, wall_s

    def add_evaluation(self, step: int, res: dict[str, Any]) -> dict[str, Any]:
        """Record an evaluation's result (``evaluation.evaluate``'s); returns its metrics columns."""
        self.evals.append({"step": step, "score": res["score_mean"], "score_std": res["score_std"],
                           "return": res["return_mean"], "return_std": res["return_std"]})
        return {"eval_score": res["score_mean"], "eval_score_std": res["score_std"],
                "eval_return": res["return_mean"], "eval_return_std": res["return_std"]}

    def final_and_best(self) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """The last evaluation and the best-scored one (None when there is none)."""
        scored = [e for e in self.evals if e.get("score") is not None]
        return (self.evals[-1] if self.evals else None), (max(scored, key=lambda e: e["score"]) if scored else None)

    def state_dict(self, wall_s: float) -> dict[str, Any]:
        return {
            "wall_s": float(wall_s),
            "acc": self.means.state_dict(),
            "evals": list(self.evals),
            "coef_start": self.coef.start,
            "coef_trace": dict(self.coef.points),
            "last_row_step": self.last_row_step,
            "last_row_wall": float(self.last_row_wall),
            "pending_row": self.pending_row,
            "warnings": list(self.coef.warnings),
        }

    def load_state_dict(self, state: dict[str, Any], device: Any) -> None:
        self.means.load_state_dict(state["acc"], device)
        self.evals = list(state["evals"])
        self.coef.start, self.coef.points = state["coef_start"], dict(state["coef_trace"])
        self.coef.warnings = list(state.get("warnings", []))
        self.last_row_step, self.last_row_wall = int(state["last_row_step"]), float(state["last_row_wall"])
        self.pending_row = state.get("pending_row")
