"""Several seeds of one run in one process: one trainer per seed, stepped in lockstep, one vmapped update.

``metaconstraint train --seeds 0-7`` (and :class:`SeedsTrainer`) runs N ordinary :class:`~metaconstraint.training.Trainer`
objects side by side. Each keeps what makes it a run of its own -- its run directory (``ROOT/seed<S>``), data
sampler and batch stream, metrics, evaluations, checkpoints and summary -- while their agents' updates are done
together by one :class:`~metaconstraint.algos.ensemble.SeedEnsemble` (parameters stacked on a leading dimension,
every update one ``torch.func.vmap``; optionally captured with ``torch.compile``). The stacked state is copied back
into each trainer's agent only where a trainer reads it: before a row, an evaluation or a checkpoint. Nothing is
read back to the host between those steps.

A checkpoint of one seed is an ordinary checkpoint, so each seed's directory can also be continued alone with
``metaconstraint train --resume ROOT/seed<S>``; ``--resume ROOT`` continues all of them in lockstep. Within one
process the result of a seed equals its separate run up to the rounding of batched kernels (exactly, in float64,
to 1e-10 after 200 updates: ``tests/test_ensemble.py``); a lockstep run resumed in lockstep is exact.
"""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path
from typing import Any, Sequence

from .algos.base import NonFiniteError
from .algos.ensemble import SeedEnsemble, check_supported
from .config import ConfigError, RunConfig
from .rundir import RunError
from .training import TrainResult, Trainer, stop_on_signals

__all__ = ["SeedsTrainer", "seed_run_dirs", "seeds_root_of"]


def seed_run_dirs(root: str | Path, seeds: Sequence[int]) -> list[Path]:
    """The run directory of each seed under ``root``."""
    return [Path(root) / f"seed{s}" for s in seeds]


def seeds_root_of(path: str | Path) -> list[Path] | None:
    """The seeds' run directories if ``path`` holds a lockstep run (``seed<S>/config.yaml`` folders and no
    config.yaml of its own), else None."""
    path = Path(path)
    if (path / "config.yaml").is_file() or not path.is_dir():
        return None
    dirs = sorted((d for d in path.glob("seed*") if (d / "config.yaml").is_file() and d.name[4:].isdigit()),
                  key=lambda d: int(d.name[4:]))
    return dirs or None


def _for_seed(config: RunConfig, seed: int) -> RunConfig:
    return dataclasses.replace(config, seed=seed, agent=dataclasses.replace(config.agent, seed=seed))


class SeedsTrainer:
    """N runs of one configuration that differ only in their seed, trained in one process.

    ``SeedsTrainer(config, seeds=[0, 1, 2], root="runs/x").train()`` starts them (``root/seed0`` ...);
    ``SeedsTrainer.resume("runs/x").train()`` continues them from their newest checkpoints, which must be of
    one step. ``compile``: capture the update with ``torch.compile`` (CUDA graphs on a GPU). Other keyword
    arguments go to each :class:`~metaconstraint.training.Trainer`.
    """

    def __init__(self, trainers: Sequence[Trainer], compile: bool = False):
        if not trainers:
            raise ConfigError("no seeds given")
        try:  # before any run directory is touched
            check_supported(trainers[0].config.algo)
        except ValueError as err:
            raise ConfigError(str(err)) from None
        seeds = [t.config.seed for t in trainers]
        if len(set(seeds)) != len(seeds):
            raise ConfigError(f"the seeds must differ, got {seeds}")
        self.trainers, self.compile = list(trainers), compile
        self.ensemble: SeedEnsemble | None = None

    @classmethod
    def new(cls, config: RunConfig, seeds: Sequence[int], root: str | Path, compile: bool = False,
            **trainer_kw: Any) -> "SeedsTrainer":
        dirs = seed_run_dirs(root, seeds)
        return cls([Trainer(_for_seed(config, s), d, **trainer_kw) for s, d in zip(seeds, dirs)], compile)

    @classmethod
    def resume(cls, root: str | Path, compile: bool = False, **trainer_kw: Any) -> "SeedsTrainer":
        dirs = seeds_root_of(root)
        if dirs is None:
            raise RunError(f"'{root}' holds no seeds' run directories (seed<S>/config.yaml); nothing to resume")
        return cls([Trainer.resume(d, **trainer_kw) for d in dirs], compile)

    def train(self, stop_after: int | None = None) -> list[TrainResult]:
        """Train every seed to the end (or, checkpointed, to ``stop_after`` total steps); one result per seed."""
        ts = self.trainers
        with contextlib.ExitStack() as stack:
            for t in ts:
                stack.enter_context(t.locked())
            running = [t.start(stop_after) for t in ts]
            if not any(running):
                return [TrainResult("finished", t.step, t.run_dir, t.write_summary("finished"), checkpoint=t.resumed_from)
                        for t in ts]
            if not all(running) or len({(t.step, t.end) for t in ts}) != 1:
                where = ", ".join(f"{t.run_dir.name} at step {t.step}" for t in ts)
                raise RunError(f"the seeds are not in step ({where}); continue each alone with "
                               "metaconstraint train --resume ROOT/seed<S>")
            self.ensemble = ensemble = SeedEnsemble.from_agents([t.agent for t in ts], compile=self.compile)
            for t in ts:
                stack.enter_context(t.session())
            stack.callback(stop_on_signals(self._on_signal))  # one handler for all, installed last
            stop = any([t.catch_up() for t in ts])
            lead = ts[0]
            while lead.step < lead.end and not stop:
                logs = ensemble.update([t.next_batch() for t in ts])
                row, _, checkpoint = lead.due(lead.step + 1)
                if row or checkpoint:  # the trainers read their agents at this step
                    self._check_finite()
                    ensemble.sync_to_agents()
                stop = any([t.after_update({k: v[i] for k, v in logs.items()}) for i, t in enumerate(ts)])
            return [t.finish() for t in ts]

    def _check_finite(self) -> None:
        try:
            self.ensemble.check_finite()
        except NonFiniteError as err:
            seed = err.members[0] if err.members else self.trainers[0].config.seed
            t = next(t for t in self.trainers if t.config.seed == seed)
            raise t.diverged_in_update(err) from err

    def _on_signal(self, signum: int) -> bool:
        return all([t._on_signal(signum) for t in self.trainers])
