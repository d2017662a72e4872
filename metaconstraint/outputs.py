"""What a training run writes besides its checkpoints: its metrics rows (with the evaluations in them),
``summary.json``, the plots and the end of its W&B run.

:class:`RunOutputs` is owned by a :class:`~metaconstraint.training.Trainer`, which tells it the step and the
wall clock at each call; the rows' running state (:class:`~metaconstraint.metrics.RunRecord`) is the trainer's,
since it goes into the checkpoints.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import torch

from . import algos
from .config import RunConfig
from .data import ObsNormalizer, Transitions
from .evaluation import EvaluationInterrupted
from .evaluation import evaluate as evaluate_policy
from .metrics import MetricsLog, RunRecord, WandbLogger
from .plotting import plot_run
from .rundir import RunEnv, RunError, atomic_write_text, flat_settings, latest_checkpoint, run_environment

__all__ = ["EvaluationFailed", "RunOutputs", "coefficient_value", "format_duration"]


class EvaluationFailed(RunError):
    """An evaluation raised; the trainer checkpoints before reporting it."""


def format_duration(seconds: float) -> str:
    """``1h02m03s``, ``2m05s`` or ``7s``."""
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def coefficient_value(agent: algos.Agent) -> float | None:
    """The agent's constraint coefficient now, as a float."""
    try:
        return float(agent.constraint.value())
    except Exception:
        return None


class RunOutputs:
    """The rows, evaluations, summary and plots of one run directory.

    ``record``: the run's rows so far (the trainer checkpoints it); ``echo``: where status lines go;
    ``save``: checkpoint the run's current step (before an evaluation cut short is reported); ``should_stop``: whether a signal came (an evaluation then stops early); ``progress``: show the
    evaluation's own bar; ``plots``: draw the plots at the end; ``load_s``: how long the data took to load.
    """

    def __init__(
        self,
        run_dir: Path,
        config: RunConfig,
        env: RunEnv,
        agent: algos.Agent,
        data: Transitions,
        normalizer: ObsNormalizer,
        device: torch.device,
        record: RunRecord,
        *,
        echo: Callable[[str], None],
        save: Callable[[], Path],
        should_stop: Callable[[], bool],
        progress: bool,
        plots: bool,
        load_s: float,
    ):
        self.run_dir, self.config, self.env, self.record = run_dir, config, env, record
        self.agent, self.data, self.normalizer, self.device = agent, data, normalizer, device
        self.echo, self.save, self.should_stop = echo, save, should_stop
        self.progress, self.make_plots = progress, plots
        self.coef_key = record.coef.key
        self.load_s = load_s
        returns = data.episode_returns()
        self.dataset_return = float(returns.mean()) if returns.size else None
        self.dataset_score = (
            None if self.dataset_return is None or data.ref_min_score is None or data.ref_max_score is None
            else 100.0 * (self.dataset_return - data.ref_min_score) / (data.ref_max_score - data.ref_min_score)
        )
        self.dataset_sha256 = data.fingerprint()  # which build of the dataset this run saw
        self.metrics: MetricsLog | None = None  # open_metrics()
        self.error: dict[str, Any] | None = None  # what summary.json reports of a divergence or failure
        self.environment: dict[str, Any] | None = None

    def open_metrics(self, tensorboard: bool, wandb_project: str | None) -> MetricsLog:
        """Open this session's metrics files (and TensorBoard / W&B sinks)."""
        flat = flat_settings(self.config.to_dict())
        self.metrics = MetricsLog(self.run_dir, self.agent.metric_names, tensorboard=tensorboard,
                                  coef_key=self.coef_key, hparams=flat)
        if wandb_project:
            self.metrics.wandb = WandbLogger(self.run_dir, wandb_project, flat, self.coef_key)
        return self.metrics

    # -------------------------------------------------------------- rows
    def write_row(self, step: int, wall_s: float, evaluate: bool, bar: Any = None) -> bool:
        """Log ``step``'s row (its numbers also on the progress ``bar``). True if a signal stopped its
        evaluation: the checkpoint is then written with the row pending (a resumed run evaluates it again).
        An evaluation that fails writes the checkpoint first too, then raises a RunError."""
        try:
            post = self._log_row(step, wall_s, evaluate)
        except EvaluationInterrupted:
            self.record.pending_row = step
            self.save()
            return True
        except EvaluationFailed as err:
            self.record.pending_row = step
            path = self.save()
            raise RunError(
                f"the evaluation at step {step} failed: {err}. The checkpoint {path} and summary.json were written "
                f"first; fix the cause, then continue with metaconstraint train --resume {self.run_dir} (it evaluates "
                "that step again)"
            ) from err.__cause__
        self.record.pending_row = None
        if bar is not None and post:
            bar.set_postfix(post, refresh=False)
        return False

    def _log_row(self, step: int, wall_s: float, evaluate: bool) -> dict[str, str]:
        """Means over the interval (floats now, not before), an evaluation if due, one row written;
        returns the progress bar's postfix."""
        row = self.record.row(step, wall_s)
        if evaluate:
            row.update(self.evaluate(step, wall_s))  # may raise: the interval's sums are kept for the redo
        self.record.close_row(step, wall_s)
        self.metrics.write(row)
        post = {}
        if self.coef_key in row:
            post[self.coef_key] = f"{row[self.coef_key]:.3g}"
        if "q_mean" in row:
            post["Q"] = f"{row['q_mean']:.3g}"
        if self.record.evals:
            last = self.record.evals[-1]
            post["score"] = f"{last['score']:.1f}" if last.get("score") is not None else f"R {last['return']:.1f}"
        return post

    def evaluate(self, step: int, wall_s: float) -> dict[str, Any]:
        """Roll the current policy out in the dataset's env (``evaluation.evaluate``); stops early on a signal."""
        c = self.config
        ref = (self.env.ref_min_score, self.env.ref_max_score) if self.env.ref_min_score is not None else None
        try:
            res = evaluate_policy(
                self.agent, self.data, episodes=c.eval_episodes, seed=c.resolved_eval_seed(), normalizer=self.normalizer,
                n_envs=min(10, c.eval_episodes), ref=ref, device=self.device,
                should_stop=self.should_stop, progress=self.progress,
            )
        except EvaluationInterrupted:
            raise
        except Exception as err:
            raise EvaluationFailed(f"{type(err).__name__}: {err}") from err
        columns = self.record.add_evaluation(step, res)
        coef = self.record.coef.last
        score = f"score {res['score_mean']:.1f} ± {res['score_std']:.1f}  " if res["score_mean"] is not None else ""
        self.echo(
            f"step {step}/{self.config.steps}  {score}return {res['return_mean']:.1f}"
            + (f"  {self.coef_key} {coef:.3g}" if coef is not None else "")
            + f"  ({format_duration(wall_s)})"
        )
        return columns

    # -------------------------------------------------------------- the end
    def finish(self, status: str, step: int, wall_s: float) -> dict[str, Any]:
        """summary.json and the plots written, the W&B run finished; returns the summary."""
        plots: list[str] = []
        self.write_summary(status, step, wall_s)  # the plots read the coefficient's start from it
        if self.make_plots:
            try:
                plots = [str(p) for p in plot_run(self.run_dir)]
            except Exception as err:  # a plotting problem must not lose the run's results
                self.echo(f"warning: could not draw the plots: {type(err).__name__}: {err}")
        summary = self.write_summary(status, step, wall_s, plots)
        wb = None if self.metrics is None else self.metrics.wandb
        if wb is not None:
            self.metrics.wandb = None
            try:
                wb.finish(summary)
            except Exception as err:  # the run's own files are written; W&B is extra
                self.echo(f"warning: could not finish the W&B run: {type(err).__name__}: {err}")
        return summary

    def write_summary(self, status: str, step: int, wall_s: float, plots: list[str] | None = None) -> dict[str, Any]:
        """Write ``summary.json`` (atomically) and return it."""
        c = self.config
        final, best = self.record.final_and_best()
        if self.environment is None:
            try:
                self.environment = run_environment(self.device)
            except Exception as err:  # never lose a summary over this
                self.environment = {"error": f"{type(err).__name__}: {err}"}
        checkpoint = latest_checkpoint(self.run_dir)
        summary = {
            "status": status,
            "algo": c.algo,
            "dataset": c.dataset,
            "env_id": self.env.env_id,
            "seed": c.seed,
            "steps": c.steps,
            "step": step,
            "final_score": None if final is None else final.get("score"),
            "final_score_std": None if final is None else final.get("score_std"),
            "final_return": None if final is None else final.get("return"),
            "final_eval_step": None if final is None else final["step"],
            "best_score": None if best is None else best["score"],
            "dataset_return": self.dataset_return,
            "dataset_score": self.dataset_score,
            "dataset_sha256": self.dataset_sha256,
            "best_score_step": None if best is None else best["step"],
            **self.record.coef.summary(coefficient_value(self.agent), step),
            "wall_s": round(wall_s, 2),
            "steps_per_s": round(step / wall_s, 2) if wall_s > 0 else None,
            "data_load_s": round(self.load_s, 2),
            "checkpoint": None if checkpoint is None else str(checkpoint),
            "plots": plots or [],
            "evals": self.record.evals,
            "warnings": list(self.record.coef.warnings),
            "environment": self.environment,
        }
        if self.error is not None:
            summary["error"] = self.error
        atomic_write_text(self.run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
        return summary
