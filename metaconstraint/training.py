"""The training loop: evaluation schedule, checkpoints, exact resume, signals, divergence guard.

A :class:`Trainer` fills one run directory (its layout and files: :mod:`metaconstraint.rundir`; its
metrics rows: :mod:`metaconstraint.metrics`; the rows, evaluations, summary and plots it writes:
:mod:`metaconstraint.outputs`). A resumed run continues the agent, the sampler's batch
stream, the interval accumulators, the counters and every RNG, so on CPU an interrupted-and-resumed
run ends bit for bit where an uninterrupted one does.

One training step is three calls the loop makes in order (:meth:`Trainer.train`)::

    batch = trainer.next_batch()          # this run's minibatch (its sampler's stream)
    logs = trainer.agent.update(batch)    # the gradient step: the one call a driver may replace
    trainer.after_update(logs)            # count, log, evaluate, checkpoint; True: stop here

(an update that refuses a NaN/Inf raises ``trainer.diverged_in_update(err)``), so a driver can step
several trainers in lockstep with one batched update of all their agents, each trainer inside its
own ``locked()`` / ``start()`` / ``session()`` and ending with ``finish()``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import re
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from tqdm.auto import tqdm

from . import algos
from .algos.base import FiniteGuard, NonFiniteError
from .batch import Batch
from .config import ConfigError, RunConfig, coefficient_name, dataset_key, dump_yaml, load_yaml, run_config_from_dict
from .data import ObsNormalizer, Transitions, load
from .data.envspec import check_env_id
from .data.sampler import Sampler
from .evaluation import check_eval_env
from .metrics import CoefficientTrace, RunRecord
from .outputs import RunOutputs, coefficient_value
from .rundir import (
    CHECKPOINT_FORMAT,
    RunEnv,
    RunError,
    RunLock,
    check_device,
    check_resumable,
    checkpoint_path,
    latest_checkpoint,
    list_checkpoints,
    remove_temp_files,
    resume_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)

__all__ = [
    "TrainResult", "Trainer", "TrainingDiverged", "default_run_dir", "load_training_data", "stop_on_signals",
]


class TrainingDiverged(RunError):
    """A logged quantity became NaN/Inf; the message names it and the step."""

    def __init__(self, message: str, quantity: str, step: int, value: float):
        super().__init__(message)
        self.quantity, self.step, self.value = quantity, step, value


@dataclass
class TrainResult:
    """What :meth:`Trainer.train` ended with."""

    status: str  # finished | interrupted | stopped | diverged
    step: int
    run_dir: Path
    summary: dict[str, Any]
    signal: int | None = None
    checkpoint: Path | None = None


def default_run_dir(config: RunConfig, root: str | Path = "runs", seeds: str | None = None) -> Path:
    """``runs/<algo>-<dataset>-seed<seed>-<YYYYmmdd-HHMMSS>`` (``seeds``: ``...-seeds<seeds>-...``, the folder
    of several seeds' run directories)."""
    slug = re.sub(r"[^\w.-]+", "_", dataset_key(config.dataset)) or "data"
    which = f"seed{config.seed}" if seeds is None else f"seeds{seeds}"
    return Path(root) / f"{config.algo}-{slug}-{which}-{time.strftime('%Y%m%d-%H%M%S')}"


def _stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except Exception:
        return False


def load_training_data(config: RunConfig, trust_env_spec: bool = False) -> Transitions:
    """The run's dataset, with the run's reference scores when it sets them; refused when its evaluation
    env cannot be built (reset with the evaluation seed), since training would fail at its first evaluation."""
    env_id = config.env_id
    if env_id is not None:  # config.yaml is a file: its env id names trusted code unless told otherwise
        env_id = check_env_id(env_id, "the run's env_id setting", trust_env_spec)
    data = load(config.dataset, env_id=env_id, trust_env_spec=trust_env_spec)
    if config.dataset_sha256 is not None:
        found = data.fingerprint()
        if not found.startswith(config.dataset_sha256.lower()):
            raise RunError(
                f"dataset {config.dataset} has content sha256 {found[:16]}…, but the run asks for "
                f"{config.dataset_sha256.lower()[:16]}… (dataset_sha256): this is another build of it, e.g. TD3-made "
                "data collected on another CPU or with other package versions. Use the build the run asks for, or "
                "leave dataset_sha256 out to train on this one"
            )
    if config.ref_min_score is not None:
        data.ref_min_score, data.ref_max_score = float(config.ref_min_score), float(config.ref_max_score)
        data.notes.append(f"reference scores {config.ref_min_score} / {config.ref_max_score} from the run's settings")
    try:
        check_eval_env(data, config.resolved_eval_seed(), data.obs_dim, data.act_dim, trust_env_spec=trust_env_spec)
    except ValueError as err:
        raise RunError(
            f"dataset {config.dataset}: {err}. Training would fail at its first evaluation, so it does not start "
            "(a dataset names its env by an env_id attribute (HDF5/npz) or env_spec (Minari metadata); "
            "name it with --env-id, e.g. --env-id Hopper-v5)"
        ) from err
    return data


def stop_on_signals(on_signal: Callable[[int], bool]) -> Callable[[], None]:
    """Route SIGINT and SIGTERM to ``on_signal(signum)`` (in the main thread; elsewhere nothing changes).
    When it returns False the previous handlers come back and the signal aborts (KeyboardInterrupt).
    Returns the function that restores the previous handlers."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def restore() -> None:
        for s, h in old.items():
            signal.signal(s, h)

    def handler(signum: int, frame: Any) -> None:
        if not on_signal(signum):
            restore()
            raise KeyboardInterrupt

    for s in old:
        signal.signal(s, handler)
    return restore


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
        self.run_dir = Path(run_dir)
        self.progress = _stderr_is_terminal() if progress is None else progress
        self.make_plots, self.tensorboard, self.wandb_project = plots, tensorboard, wandb
        self.trust_env_spec = trust_env_spec
        self.coef_key = coefficient_name(config.algo)
        self._echo = echo
        # built by setup()
        self.device: torch.device | None = None
        self.data: Transitions | None = None
        self.normalizer: ObsNormalizer | None = None
        self.sampler: Sampler | None = None
        self.agent: algos.Agent | None = None
        self.log_guard: FiniteGuard | None = None
        self.env: RunEnv | None = None
        self.record: RunRecord | None = None  # rows, evaluations, the coefficient's trace (saved in checkpoints)
        self.outputs: RunOutputs | None = None  # writes the rows, evaluations, summary and plots
        self.step = 0
        self.wall_s = 0.0
        # this session
        self.resuming = False  # set by resume(); the checkpoint is chosen once the run is locked
        self.resume_choice: str | Path | int | None = None
        self.resumed_from: Path | None = None
        self.last_checkpoint: Path | None = None
        self.lock: RunLock | None = None
        self.bar: Any = None
        self.end = config.steps  # the step this session trains to (start() sets it)
        self.status = "finished"
        self.stop_signal: int | None = None
        self.session_start, self.wall_base = 0.0, 0.0

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
        trainer = cls(run_config_from_dict(data), run_dir, **kw)
        trainer.resuming, trainer.resume_choice = True, checkpoint
        return trainer

    def echo(self, text: str) -> None:
        if self._echo is None:
            return
        if self.bar is not None and not self.bar.disable:
            self.bar.write(text)  # above the progress bar
        else:
            self._echo(text)

    def setup(self) -> None:
        """Check the device and the algorithm settings, load the data, build sampler and agent, and
        build the evaluation env once (reset with the evaluation seed): everything the run uses
        later fails here, before step 1."""
        if self.agent is not None:
            return
        c = self.config
        self.device = check_device(c.device)
        # Build a throwaway agent on a 1-d problem first: bad algorithm settings fail before the data loads.
        try:
            algos.make(c.algo, 1, 1, 1.0, device="cpu", config=dataclasses.replace(c.agent))
        except (ValueError, KeyError, TypeError) as err:
            raise ConfigError(f"{c.algo} settings: {err}") from err
        t0 = time.perf_counter()
        self.data = data = load_training_data(c, self.trust_env_spec)
        self.normalizer = ObsNormalizer.from_transitions(data) if c.normalize_obs else ObsNormalizer.identity(data.obs_dim)
        sampler_seed = int(np.random.SeedSequence([c.seed, 0x5A4D]).generate_state(1)[0])
        self.sampler = Sampler(data, c.batch_size, self.device, self.normalizer, c.reward_scale, seed=sampler_seed)
        self.agent = algos.make(
            c.algo, data.obs_dim, data.act_dim, data.max_action, device=self.device, config=dataclasses.replace(c.agent)
        )
        self.log_guard = FiniteGuard(self.device, quantities=self.agent.metric_names)  # NaN/Inf among the logs
        self.env = RunEnv.of(data)
        load_s = time.perf_counter() - t0
        self.record = RunRecord(CoefficientTrace(self.coef_key, coefficient_value(self.agent), self.echo))
        self.outputs = RunOutputs(
            self.run_dir, c, self.env, self.agent, data, self.normalizer, self.device, self.record, echo=self.echo,
            save=self.save, should_stop=lambda: self.stop_signal is not None, progress=self.progress,
            plots=self.make_plots, load_s=load_s,
        )

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
            "rng": rng_state(),
            "trainer": self.record.state_dict(self.wall_s),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        check_resumable(state, self.config, self.env)
        self.agent.load_state_dict(state["agent"])
        self.sampler.load_state_dict(state["sampler"])
        self.normalizer.load_state_dict(state["normalizer"])
        set_rng_state(state["rng"])
        self.step, self.wall_s = int(state["step"]), float(state["trainer"]["wall_s"])
        self.record.load_state_dict(state["trainer"], self.device)

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

    # -------------------------------------------------------------- the loop
    def train(self, stop_after: int | None = None) -> TrainResult:
        """Train to ``config.steps`` (or stop, checkpointed, after ``stop_after`` total steps).

        The run directory is locked first (one writer per directory); a bad setting, dataset or
        evaluation env fails before anything else is written there.
        """
        with self.locked():
            if not self.start(stop_after):  # a resumed run that had already finished
                summary = self.write_summary("finished")
                return TrainResult("finished", self.step, self.run_dir, summary, checkpoint=self.resumed_from)
            with self.session():
                stop = self.catch_up()
                while self.step < self.end and not stop:
                    batch = self.next_batch()
                    try:
                        logs = self.agent.update(batch)
                    except FloatingPointError as err:
                        raise self.diverged_in_update(err) from err
                    stop = self.after_update(logs)
            return self.finish()

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Create and lock the run directory, check it and :meth:`setup`; unlock at the end. A failure
        before the run started leaves no trace of it (only folders created here are removed)."""
        self.lock = RunLock.create(self.run_dir)
        try:
            for p in remove_temp_files(self.run_dir):
                self.echo(f"removed {p.name}, a temporary file left by a killed write")
            try:
                if not self.resuming and ((self.run_dir / "config.yaml").exists() or list_checkpoints(self.run_dir)):
                    raise RunError(
                        f"'{self.run_dir}' already holds a run; continue it with `metaconstraint train --resume "
                        f"{self.run_dir}` or choose another --run-dir"
                    )
                self.setup()
            except BaseException:
                self.lock.undo()
                raise
            yield
        finally:
            self.lock.release()

    def start(self, stop_after: int | None = None) -> bool:
        """Open the metrics files, write config.yaml (a new run) or load the checkpoint (a resumed one)
        and set the step to train to (``end``); False when a resumed run had already finished."""
        c = self.config
        try:
            (self.run_dir / "checkpoints").mkdir(exist_ok=True)
        except OSError as err:
            raise RunError(f"cannot write to the run directory '{self.run_dir}': {err.strerror or err}") from err
        metrics = self.outputs.open_metrics(self.tensorboard, self.wandb_project)
        if self.resuming:
            found = resume_checkpoint(self.run_dir, self.resume_choice, self.device, self.echo)
            if found is not None:
                self.resumed_from = found[0]
                self.load_state_dict(found[1])
            # a run started over (no checkpoint) keeps no rows at all, not even its step-0 evaluation
            for note in metrics.truncate_after(self.step if found is not None else -1):
                self.echo(f"repaired {note}")
            if found is None:
                self.echo(f"{self.run_dir} was stopped before its first checkpoint: starting it over from step 0")
            else:
                self.echo(f"resuming {self.run_dir} from step {self.step} ({self.resumed_from.name})")
            if self.step >= c.steps and self.record.pending_row is None:
                self.echo(f"the run already finished at step {self.step}; nothing to do")
                metrics.close()
                return False
        else:
            dump_yaml(c, self.run_dir / "config.yaml")
            self.echo(
                f"training {c.algo} on {c.dataset} ({self.env.dataset_size} transitions, env {self.env.env_id}) for "
                f"{c.steps} steps, preset {c.preset}, device {self.device}; run directory {self.run_dir}"
            )
        if stop_after is not None and stop_after <= self.step:
            raise ConfigError(f"--stop-after {stop_after} is not past the current step {self.step}")
        self.end = c.steps if stop_after is None else min(c.steps, stop_after)
        return True

    @contextlib.contextmanager
    def session(self) -> Iterator[None]:
        """Signal handlers, the progress bar and the wall clock around the steps. A divergence or a
        failed evaluation or write ends the session with summary.json written (status diverged or
        failed) before the error goes on."""
        restore_signals = stop_on_signals(self._on_signal)
        self.bar = tqdm(total=self.config.steps, initial=self.step, disable=not self.progress, dynamic_ncols=True,
                        mininterval=0.5, desc=self.config.algo, unit="step", file=sys.stderr)
        self.session_start, self.wall_base = time.perf_counter(), self.wall_s
        try:
            yield
        except (TrainingDiverged, RunError, OSError) as caught:
            self._tick()
            self._close_session()
            err = caught
            if isinstance(err, OSError):  # a metrics or summary write failed (disk full, ...)
                err = RunError(
                    f"writing to {self.run_dir} failed at step {self.step}: {err}; the newest checkpoint "
                    f"{self.last_checkpoint or latest_checkpoint(self.run_dir)} is intact; fix the cause, then continue "
                    f"with metaconstraint train --resume {self.run_dir}"
                )
            if not isinstance(err, TrainingDiverged):
                self.outputs.error = {"step": self.step, "message": str(err)}
            try:
                self.outputs.finish("diverged" if isinstance(err, TrainingDiverged) else "failed", self.step, self.wall_s)
            except OSError as write_err:
                self.echo(f"warning: could not write summary.json: {write_err}")
            if err is caught:
                raise
            raise err from caught
        finally:
            restore_signals()
            self._close_session()

    def _close_session(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        self.outputs.metrics.close()

    def finish(self) -> TrainResult:
        """The result, with summary.json and the plots written."""
        if self.status == "finished" and self.step < self.config.steps:
            self.status = "stopped"
        summary = self.outputs.finish(self.status, self.step, self.wall_s)
        return TrainResult(self.status, self.step, self.run_dir, summary, signal=self.stop_signal,
                           checkpoint=self.last_checkpoint)

    def _tick(self) -> None:
        self.wall_s = self.wall_base + time.perf_counter() - self.session_start

    def catch_up(self) -> bool:
        """Write the row a signal or an error cut short (or the untrained policy's evaluation at step 0,
        so curves start where training does; no RNG of the run is used). True if a signal stopped it."""
        pending = self.record.pending_row
        if pending is not None:
            if self.outputs.write_row(pending, self.wall_s, True, self.bar):
                self.status = "interrupted"
            else:
                self.save()
        elif self.step == 0 and self.config.eval_every > 0 and not self.record.evals:
            if self.outputs.write_row(0, self.wall_s, True, self.bar):
                self.status = "interrupted"
        return self.status == "interrupted"

    def next_batch(self) -> Batch:
        """This run's next minibatch."""
        return self.sampler.sample()

    def due(self, step: int) -> tuple[bool, bool, bool]:
        """What :meth:`after_update` does at ``step``: (write a row, evaluate, checkpoint). A driver that
        updates agents outside the trainer brings them up to date before such a step."""
        c = self.config
        evaluate = step == c.steps or (c.eval_every > 0 and step % c.eval_every == 0)
        row = evaluate or step % c.log_every == 0 or step == self.end
        checkpoint = (c.checkpoint_every > 0 and step % c.checkpoint_every == 0) or self.stop_signal is not None
        return row, evaluate, checkpoint or step == self.end

    def after_update(self, logs: dict[str, torch.Tensor]) -> bool:
        """Count the update whose ``logs`` are given, write the step's row (and evaluation) and checkpoint
        when due; True when the run must stop here (a signal came). Nothing is read back from the device
        between rows: a NaN/Inf is found at the next row or checkpoint (:meth:`check_finite`), which
        names the update it happened in, and no checkpoint is written after it."""
        step = self.step = self.step + 1
        if logs:
            self.log_guard.record_all(logs)
        self.log_guard.commit()
        self.record.means.add(logs)
        self.bar.update(1)
        self._tick()
        row, evaluate, checkpoint = self.due(step)
        if row or checkpoint:
            self.check_finite()
        if row:
            if self.outputs.write_row(step, self.wall_s, evaluate, self.bar):
                self.status = "interrupted"  # the signal came during the evaluation: checkpoint written
                return True
            self._tick()
        if checkpoint:
            self.save()
        if self.stop_signal is not None:
            self.status = "interrupted"
        return self.stop_signal is not None

    def _on_signal(self, signum: int) -> bool:
        """The first SIGINT/SIGTERM: stop after the current update (True); a second one: abort now (False)."""
        if self.stop_signal is not None:
            return False
        self.stop_signal = signum
        self.echo(
            f"\n{signal.Signals(signum).name} received: finishing the current update and writing a checkpoint "
            "(send it again to abort without one)"
        )
        return True

    # -------------------------------------------------------------- per step
    def check_finite(self) -> None:
        """Stop at the first NaN/Inf since the last check: a loss or hypergradient the agent recorded, or a
        logged quantity (both kept on the device with the update they happened in). One host read each."""
        try:
            self.agent.check_finite()
            self.log_guard.check(self.step)
        except NonFiniteError as err:
            raise self.diverged_in_update(err) from err

    def diverged_in_update(self, err: FloatingPointError) -> TrainingDiverged:
        """The error for a NaN/Inf an agent refused or recorded: :class:`NonFiniteError` names the quantity,
        its value, the update and the batch fields that were not finite; any other component's refusal
        is reported with its own message at the current step."""
        if isinstance(err, NonFiniteError):
            detail = (f"non-finite batch fields: {', '.join(err.bad_fields)}" if err.bad_fields
                      else "the batch is finite: the networks diverged")
            return self._diverged(err.quantity, err.step, err.value, detail)
        return self._diverged("a value", self.step, math.nan, str(err))

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
        self.outputs.error = {"quantity": name, "step": step, "value": value, "message": msg}
        return TrainingDiverged(msg, name, step, value)

    def write_summary(self, status: str) -> dict[str, Any]:
        """Write ``summary.json`` (atomically) and return it."""
        return self.outputs.write_summary(status, self.step, self.wall_s)
