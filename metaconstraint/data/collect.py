"""``metaconstraint collect``: write Minari datasets of graded quality for any Gymnasium env.

Behaviours: ``random``; ``policy`` (a saved checkpoint, ``--policy``); and, from the built-in
online TD3 trainer (:mod:`metaconstraint.data.collect_td3`), ``expert``, ``medium``,
``medium-replay`` (the trainer's replay buffer up to the medium point) and ``medium-expert``
(medium then expert episodes: exactly the medium and expert datasets of the same seed, joined).
Every dataset is written by ``minari.DataCollector`` (through :class:`metaconstraint.data.Collector`,
which needs no jax) and stores ``ref_min_score`` (mean return of the random policy) and
``ref_max_score`` (mean return of the TD3 expert, or ``--expert-policy``, or given numbers) over
``--ref-episodes`` episodes. ``random`` and ``policy`` train nothing: their ``ref_max_score`` comes
from ``--ref-max-score`` or ``--expert-policy``, from the TD3 run when a TD3 behaviour is collected
in the same call, or from a TD3 expert trained on request (``--measure-ref-scores``); otherwise the
dataset stores no reference scores (Minari keeps them as a pair) and the summary says how to get
them.

Python::

    from metaconstraint.data.collect import collect
    collect("Pendulum-v1", "medium", steps=50_000, seed=0)

Shell::

    metaconstraint collect Pendulum-v1 --behaviour random medium medium-replay expert --steps 100000
    python -m metaconstraint.data.collect Hopper-v5 --behaviour medium --td3-steps 300000
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import re
import shutil
import sys
import time
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import gymnasium as gym
import numpy as np

from ..cliargs import HelpFormatter
from .collect_td3 import TD3Config, behaviour_policy, random_return, replay_until, rollout_returns, run_dir, train_behaviours
from .minari_compat import Collector, compact_hdf5
from .policies import Policy, RandomPolicy, load_policy

BEHAVIOURS = ("random", "policy", "expert", "medium", "medium-replay", "medium-expert")
TD3_BEHAVIOURS = ("expert", "medium", "medium-replay", "medium-expert")


@dataclass
class CollectResult:
    dataset_id: str
    path: str
    episodes: int
    steps: int
    ref_min_score: float | None
    ref_max_score: float | None
    wall_s: float  # this dataset only (collection + reference returns, not TD3 training)
    size_bytes: int
    return_mean: float
    behaviour: dict[str, Any]
    ref_note: str = ""  # where the reference scores came from, or how to get them


def default_behaviour_root() -> Path:
    """``$XDG_CACHE_HOME/metaconstraint/behaviours`` (default ``~/.cache/...``): trained TD3 runs."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "metaconstraint" / "behaviours"


def default_dataset_id(env_id: str, behaviour: str, noise: float = 0.0) -> str:
    """``metaconstraint/<env name>/<behaviour>[-noise<percent>]-v0``, e.g. ``metaconstraint/hopper/medium-v0``."""
    env_name = re.sub(r"-v\d+$", "", env_id.split("/")[-1]).lower()
    env_name = re.sub(r"[^\w-]", "_", env_name)
    suffix = f"-noise{round(noise * 100)}" if noise > 0 else ""
    return f"metaconstraint/{env_name}/{behaviour}{suffix}-v0"


@contextlib.contextmanager
def _datasets_path(path: str | os.PathLike | None) -> Iterator[Path]:
    old = os.environ.get("MINARI_DATASETS_PATH")
    if path is not None:
        os.environ["MINARI_DATASETS_PATH"] = str(Path(path).expanduser().resolve())
    try:
        yield Path(os.environ.get("MINARI_DATASETS_PATH") or Path.home() / ".minari" / "datasets")
    finally:
        if path is not None:
            if old is None:
                os.environ.pop("MINARI_DATASETS_PATH", None)
            else:
                os.environ["MINARI_DATASETS_PATH"] = old


def _prepare_target(root: Path, dataset_id: str, overwrite: bool) -> Path:
    from minari.dataset.minari_dataset import parse_dataset_id

    parse_dataset_id(dataset_id)  # raises a readable ValueError for malformed ids
    target = root / dataset_id
    if target.exists():
        if not overwrite:
            raise FileExistsError(f"dataset '{dataset_id}' already exists at {target}; pass overwrite=True (--overwrite) to replace it")
        if not (target / "data" / "metadata.json").is_file():
            raise FileExistsError(f"{target} exists but is not a Minari dataset; refusing to delete it")
    return target


def _remove_old(target: Path) -> None:
    """Delete the dataset being replaced (only once the new data is ready to be written)."""
    if (target / "data" / "metadata.json").is_file():
        shutil.rmtree(target)


def _seed_rng(seed: int, key: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(key.encode())])


def _run_policy(
    collector: Any, policy: Policy, steps: int, seed: int, key: str, noise: float, low: np.ndarray, high: np.ndarray,
    bar: Any,
) -> None:
    """Step ``policy`` (plus Gaussian noise of std ``noise * (high - low) / 2``) for exactly ``steps`` steps."""
    rng = _seed_rng(seed, key)
    sigma = noise * (high - low) / 2.0
    obs, _ = collector.reset(seed=int(rng.integers(2**31 - 1)))
    for _ in range(steps):
        a = np.asarray(policy(np.asarray(obs, np.float32)[None])[0], np.float32)
        if noise > 0:
            a = a + rng.normal(0.0, 1.0, a.shape).astype(np.float32) * sigma
        a = np.clip(a, low, high).astype(np.float32)
        obs, _, term, trunc, _ = collector.step(a)
        if term or trunc:
            obs, _ = collector.reset(seed=int(rng.integers(2**31 - 1)))
        bar.update(1)


def _replay_buffer(collector: Any, replay: dict[str, np.ndarray], bar: Any) -> None:
    """Re-execute a TD3 replay buffer (its reset seeds and actions) through the DataCollector."""
    starts = list(replay["episode_starts"]) + [len(replay["rewards"])]
    for k, seed in enumerate(replay["episode_seeds"]):
        collector.reset(seed=int(seed))
        for i in range(starts[k], starts[k + 1]):
            obs, r, term, trunc, _ = collector.step(replay["actions"][i])
            if not np.allclose(obs, replay["next_observations"][i], rtol=1e-5, atol=1e-5):
                raise RuntimeError(
                    f"re-executing the replay buffer diverged at step {i} (episode {k}): the env is not deterministic "
                    "given its reset seed and actions"
                )
            bar.update(1)


def collect(
    env_id: str,
    behaviour: str = "random",
    *,
    dataset_id: str | None = None,
    steps: int = 100_000,
    seed: int = 0,
    noise: float = 0.0,
    policy: str | os.PathLike | None = None,
    td3: TD3Config | None = None,
    behaviour_dir: str | os.PathLike | None = None,
    ref_episodes: int = 10,
    ref_scores: bool = True,
    ref_min_score: float | None = None,
    ref_max_score: float | None = None,
    expert_policy: str | os.PathLike | None = None,
    measure_ref_scores: bool = False,
    overwrite: bool = False,
    datasets_path: str | os.PathLike | None = None,
    progress: bool = True,
    author: str = "metaconstraint",
    description: str | None = None,
    compact: bool = False,
) -> CollectResult:
    """Collect one Minari dataset; see the module docstring. Returns what was written.

    ``steps`` env steps are recorded (the last episode is truncated there), except for
    ``medium-replay`` (the replay buffer up to the medium point, whatever its length) and
    ``medium-expert`` (``steps`` of each). Reproducible: the same arguments give the same data.
    ``compact`` rewrites the HDF5 file unchunked (about 3x smaller for short episodes; used for
    the shipped dataset). ``measure_ref_scores``: for ``random`` and ``policy``, train (or reuse)
    the TD3 expert to measure ``ref_max_score`` when neither it nor ``expert_policy`` is given.
    Errors name the command-line flag of the argument at fault.
    """
    if behaviour not in BEHAVIOURS:
        raise ValueError(f"unknown behaviour '{behaviour}' (--behaviour); choose one of {', '.join(BEHAVIOURS)}")
    if behaviour == "policy" and policy is None:
        raise ValueError("behaviour 'policy' needs --policy (policy=): a policy file written by `metaconstraint export`, "
                         "a policy checkpoint, or 'module:factory'")
    if steps <= 0:
        raise ValueError(f"--steps (steps) must be positive, got {steps}")
    if noise < 0:
        raise ValueError(f"--noise (noise) must be >= 0, got {noise}")
    if ref_episodes <= 0:
        raise ValueError(f"--ref-episodes (ref_episodes) must be positive, got {ref_episodes}")
    if ref_max_score is not None and expert_policy is not None:
        raise ValueError("give --ref-max-score or --expert-policy, not both (both set ref_max_score)")
    if ref_min_score is not None and ref_max_score is not None and ref_max_score <= ref_min_score:
        raise ValueError(f"--ref-max-score ({ref_max_score}) must be above --ref-min-score ({ref_min_score})")
    for name, value in (("--td3-steps", td3.total_steps if td3 else 1), ("--td3-batch-size", td3.batch_size if td3 else 1),
                        ("--td3-eval-every", td3.eval_every if td3 else 1), ("--td3-eval-episodes", td3.eval_episodes if td3 else 1),
                        ("--td3-confirm-episodes", td3.confirm_episodes if td3 else 1)):
        if value <= 0:
            raise ValueError(f"{name} must be positive, got {value}")
    if td3 is not None and (td3.lr <= 0 or not all(h > 0 for h in td3.hidden) or td3.start_steps < 0):
        raise ValueError(f"--td3-lr must be > 0, --td3-hidden sizes >= 1 and --td3-start-steps >= 0; got {td3.lr}, "
                         f"{','.join(map(str, td3.hidden))} and {td3.start_steps}")
    if td3 is not None and td3.start_steps >= td3.total_steps:
        raise ValueError(f"--td3-start-steps ({td3.start_steps}) must be below --td3-steps ({td3.total_steps}): TD3 "
                         "would never learn")
    import minari

    td3 = td3 or TD3Config()
    dataset_id = dataset_id or default_dataset_id(env_id, behaviour, noise)
    with _datasets_path(datasets_path) as root:
        target = _prepare_target(root, dataset_id, overwrite)  # fail before any training; delete only at the end
        space = gym.make(env_id).action_space
        if not isinstance(space, gym.spaces.Box):
            raise ValueError(f"{env_id} has action space {space}; collect supports continuous (Box) actions")
        low, high = space.low.astype(np.float32), space.high.astype(np.float32)

        needs_trainer = behaviour in TD3_BEHAVIOURS or (
            ref_scores and measure_ref_scores and ref_max_score is None and expert_policy is None
        )
        knows_max = ref_max_score is not None or expert_policy is not None or needs_trainer
        if ref_scores and not knows_max and ref_min_score is not None:
            raise ValueError(
                "--ref-min-score alone cannot be stored: Minari keeps reference scores as a pair; add --ref-max-score, "
                "--expert-policy or --measure-ref-scores"
            )
        summary, rdir = None, None
        if needs_trainer:
            rdir = run_dir(behaviour_dir or default_behaviour_root(), env_id, seed, td3)
            summary = train_behaviours(env_id, td3, seed, rdir, ref_episodes=ref_episodes, progress=progress)

        t0 = time.perf_counter()
        ref_seed = 20_000_000 + seed * 1000  # the same episodes the trainer's references used
        lo = hi = None
        if ref_scores and knows_max:
            if ref_min_score is not None:
                lo = float(ref_min_score)
            elif summary is not None and summary["ref_episodes"] == ref_episodes:
                lo = float(summary["random_return"])
            else:
                lo = random_return(env_id, ref_episodes, ref_seed)
            if ref_max_score is not None:
                hi = float(ref_max_score)
            elif expert_policy is not None:
                hi = float(rollout_returns(env_id, load_policy(expert_policy), ref_episodes, ref_seed).mean())
            else:
                assert summary is not None
                hi = float(summary["expert"]["return"])
        ref_note = _ref_note(ref_scores, lo, hi, ref_min_score, ref_max_score, expert_policy, summary, env_id, td3,
                             ref_episodes)

        info: dict[str, Any] = {"behaviour": behaviour, "seed": seed, "noise": noise, "env_id": env_id}
        if summary is not None:
            info["td3"] = {"run": rdir.name, "medium_step": summary["medium"]["step"],
                           "medium_return": summary["medium"]["return"], "expert_step": summary["expert"]["step"],
                           "expert_return": summary["expert"]["return"], "steps_trained": summary["steps_trained"]}
        if policy is not None:
            info["policy"] = str(policy)

        from tqdm.auto import tqdm

        collector = Collector(gym.make(env_id), record_infos=False)
        try:
            if behaviour == "medium-replay":
                replay = replay_until(rdir, summary["medium"]["step"])
                total = len(replay["rewards"])
            else:
                total = steps * (2 if behaviour == "medium-expert" else 1)
            with tqdm(total=total, desc=f"collect {dataset_id}", disable=not progress, mininterval=2.0) as bar:
                if behaviour == "random":
                    _run_policy(collector, RandomPolicy(low, high, seed), steps, seed, "random", noise, low, high, bar)
                elif behaviour == "policy":
                    _run_policy(collector, load_policy(policy), steps, seed, "policy", noise, low, high, bar)
                elif behaviour in ("medium", "expert"):
                    _run_policy(collector, behaviour_policy(rdir, behaviour), steps, seed, behaviour, noise, low, high, bar)
                elif behaviour == "medium-expert":
                    for part in ("medium", "expert"):
                        _run_policy(collector, behaviour_policy(rdir, part), steps, seed, part, noise, low, high, bar)
                else:
                    _replay_buffer(collector, replay, bar)
            algo = "uniform random" if behaviour == "random" else (
                f"policy checkpoint {policy}" if behaviour == "policy" else f"TD3 behaviour ({behaviour})")
            text = description or (
                f"{behaviour} data on {env_id} collected by metaconstraint (seed {seed}, Gaussian action noise {noise}). "
                + (f"ref_min_score: {'given' if ref_min_score is not None else 'random policy'}, ref_max_score: "
                   f"{'given' if ref_max_score is not None else 'expert policy'} over {ref_episodes} episodes."
                   if hi is not None else "No reference scores.")
            )
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=r"`(code_permalink|author_email)` is set to None")
                kwargs: dict[str, Any] = dict(
                    eval_env=env_id, algorithm_name=algo, author=author, description=text,
                    num_episodes_average_score=ref_episodes,
                )
                if hi is not None:
                    kwargs.update(ref_min_score=lo, ref_max_score=hi)
                if overwrite:
                    _remove_old(target)
                ds = collector.create_dataset(dataset_id, **kwargs)
        finally:
            collector.close()
        ds.storage.update_metadata({"metaconstraint": json.dumps(info)})
        if compact:
            main = Path(ds.storage.data_path) / "main_data.hdf5"
            if main.is_file():
                compact_hdf5(main)
                ds = minari.MinariDataset(ds.storage.data_path)
                ds.storage.update_metadata({"dataset_size": ds.storage.get_size()})
        wall = time.perf_counter() - t0
        size = sum(f.stat().st_size for f in target.rglob("*") if f.is_file())
        returns = [float(np.sum(ep.rewards)) for ep in ds.iterate_episodes()]
        return CollectResult(
            dataset_id=dataset_id, path=str(target), episodes=ds.total_episodes, steps=ds.total_steps,
            ref_min_score=lo, ref_max_score=hi, wall_s=wall, size_bytes=size, return_mean=float(np.mean(returns)),
            behaviour=info, ref_note=ref_note,
        )


def _ref_note(ref_scores: bool, lo: float | None, hi: float | None, given_lo: float | None, given_hi: float | None,
              expert_policy: Any, summary: Any, env_id: str, td3: TD3Config, episodes: int) -> str:
    """Where the stored reference scores came from, or how to get them (one sentence)."""
    if not ref_scores:
        return "none stored (--no-ref-scores)"
    if hi is None:
        return (
            "none stored: the expert return is unknown and random data trains nothing. Give --ref-max-score R "
            "(and --ref-min-score), or --expert-policy FILE, or --measure-ref-scores (trains a TD3 expert first: "
            f"--td3-steps {td3.total_steps:,}; 20,000 steps of 64-wide TD3 on Pendulum-v1 took 1.5-7 min on 2 CPU "
            "cores, MuJoCo needs hours; cached for later calls); or score runs later with train/report "
            "--ref-min-score/--ref-max-score"
        )
    where_lo = "given" if given_lo is not None else f"random policy over {episodes} episodes"
    if given_hi is not None:
        where_hi = "given"
    elif expert_policy is not None:
        where_hi = f"--expert-policy over {episodes} episodes"
    else:
        where_hi = f"the TD3 expert (step {summary['expert']['step']}) over {episodes} episodes"
    return f"ref_min_score {lo:.1f} ({where_lo}), ref_max_score {hi:.1f} ({where_hi})"


# ---------------------------------------------------------------------------- command line
def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``collect`` options (shared by ``metaconstraint collect`` and ``python -m``)."""
    d = TD3Config()
    p.add_argument("env_id", help="Gymnasium env id, e.g. Pendulum-v1 or Hopper-v5")
    p.add_argument("--behaviour", "-b", nargs="+", default=["random"], choices=BEHAVIOURS,
                   help="one or more behaviours; TD3 ones share one training run (default: random)")
    p.add_argument("--steps", type=int, default=100_000, help="env steps per dataset (default: 100000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--noise", type=float, default=0.0, help="Gaussian action noise std, as a fraction of half the action range")
    p.add_argument("--dataset-id", help="Minari id (only with one behaviour); default metaconstraint/<env>/<behaviour>-v0")
    p.add_argument("--policy", help="behaviour 'policy': a checkpoint file or 'module:factory'")
    p.add_argument("--datasets-path", help="Minari root to write into (default: $MINARI_DATASETS_PATH or ~/.minari/datasets)")
    p.add_argument("--behaviour-dir", help=f"where TD3 runs are cached (default: {default_behaviour_root()})")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset with the same id")
    p.add_argument("--ref-episodes", type=int, default=10, help="episodes for the reference returns (default: 10)")
    p.add_argument("--ref-min-score", type=float, help="use this ref_min_score instead of the random policy's return")
    p.add_argument("--ref-max-score", type=float, help="use this ref_max_score instead of the expert's return")
    p.add_argument("--expert-policy", help="checkpoint whose mean return becomes ref_max_score")
    p.add_argument("--no-ref-scores", action="store_true", help="store no reference scores")
    p.add_argument("--measure-ref-scores", action="store_true",
                   help="random/policy: train (or reuse) the TD3 expert to measure ref_max_score (default: random and "
                        "policy train nothing and store no reference scores unless --ref-max-score or --expert-policy "
                        "is given or a TD3 behaviour is collected in the same call)")
    p.add_argument("--json", action="store_true", help="print one JSON line per dataset instead of the summary")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--author", default="metaconstraint")
    p.add_argument("--description")
    p.add_argument("--compact", action="store_true", help="rewrite the HDF5 file unchunked (smaller; for shipping)")
    g = p.add_argument_group("TD3 behaviour trainer")
    g.add_argument("--td3-steps", type=int, default=d.total_steps, help=f"step budget (default: {d.total_steps})")
    g.add_argument("--td3-start-steps", type=int, default=d.start_steps, help=f"random steps first (default: {d.start_steps})")
    g.add_argument("--td3-hidden", default=",".join(map(str, d.hidden)), help="hidden sizes (default: 128,128)")
    g.add_argument("--td3-batch-size", type=int, default=d.batch_size)
    g.add_argument("--td3-lr", type=float, default=d.lr)
    g.add_argument("--td3-eval-every", type=int, default=d.eval_every, help=f"steps between snapshots (default: {d.eval_every})")
    g.add_argument("--td3-eval-episodes", type=int, default=d.eval_episodes)
    g.add_argument("--td3-confirm-episodes", type=int, default=d.confirm_episodes,
                   help="episodes to confirm a medium candidate's return")
    g.add_argument("--td3-stop-return", type=float, help="stop training once an evaluation reaches this return")
    g.add_argument("--td3-reference", help="'low,high': returns scoring 0 and 1 when picking the medium snapshot "
                   "(default: measured random and expert returns)")
    g.add_argument("--medium-band", default="0.333,0.5", help="medium = normalised score in this band (default: 0.333,0.5)")


def _td3_from_args(args: argparse.Namespace) -> TD3Config:
    try:
        band = tuple(float(x) for x in args.medium_band.split(","))
    except ValueError:
        band = ()
    if len(band) != 2 or not 0 <= band[0] < band[1] <= 1:
        raise ValueError(f"--medium-band must be two fractions lo,hi with 0 <= lo < hi <= 1, got {args.medium_band!r}")
    try:
        hidden = tuple(int(x) for x in args.td3_hidden.split(","))
    except ValueError:
        raise ValueError(f"--td3-hidden must be layer sizes like 128,128, got {args.td3_hidden!r}") from None
    return TD3Config(
        total_steps=args.td3_steps, start_steps=args.td3_start_steps,
        hidden=hidden, batch_size=args.td3_batch_size, lr=args.td3_lr,
        eval_every=args.td3_eval_every, eval_episodes=args.td3_eval_episodes,
        confirm_episodes=args.td3_confirm_episodes, stop_return=args.td3_stop_return,
        medium_band=band, medium_target=sum(band) / 2, reference=_pair(args.td3_reference, "--td3-reference"),
    )


def _pair(text: str | None, flag: str) -> tuple[float, float] | None:
    if text is None:
        return None
    try:
        lo, hi = (float(x) for x in text.split(","))
    except ValueError:
        raise ValueError(f"{flag} must be two numbers 'low,high', got {text!r}") from None
    if hi <= lo:
        raise ValueError(f"{flag} needs high > low, got {text!r}")
    return lo, hi


def run(args: argparse.Namespace) -> int:
    """Run ``collect`` for every requested behaviour; prints a summary per dataset (``--json``: one JSON line)."""
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1") or 1))
    try:
        if args.dataset_id and len(args.behaviour) > 1:
            raise ValueError("--dataset-id names one dataset; give a single --behaviour with it")
        if "policy" in args.behaviour and args.policy is None:
            raise ValueError("--behaviour policy needs --policy: a file written by `metaconstraint export`, a policy "
                             "checkpoint, or 'module:factory'")
        if args.policy is not None and "policy" not in args.behaviour:
            raise ValueError("--policy is the behaviour of --behaviour policy; add it (or drop --policy)")
        td3 = _td3_from_args(args)
        # random/policy next to a TD3 behaviour: the TD3 run is there anyway, so its expert gives ref_max_score
        with_td3 = any(b in TD3_BEHAVIOURS for b in args.behaviour)
        results = []
        for b in args.behaviour:
            res = _collect_from_args(args, b, td3, measure=args.measure_ref_scores or with_td3)
            results.append(res)
            print(json.dumps(dataclasses.asdict(res)) if args.json else summary_text(res), flush=True)
    except (ValueError, FileExistsError, FileNotFoundError, RuntimeError) as err:  # a message, not a traceback
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not args.json and results:
        ids = " ".join(r.dataset_id for r in results)
        root = f"MINARI_DATASETS_PATH={args.datasets_path} " if args.datasets_path else ""
        print(f"next: {root}metaconstraint data info {results[0].dataset_id} | "
              f"{root}metaconstraint train --dataset {results[0].dataset_id}" + (f"   (all: {ids})" if len(results) > 1 else ""))
    return 0


def summary_text(res: CollectResult) -> str:
    """A few readable lines about a written dataset (what ``collect`` prints)."""
    score = ""
    if res.ref_min_score is not None and res.ref_max_score is not None and res.ref_max_score != res.ref_min_score:
        score = f" (normalised score {100 * (res.return_mean - res.ref_min_score) / (res.ref_max_score - res.ref_min_score):.1f})"
    td3 = res.behaviour.get("td3")
    lines = [
        f"wrote {res.dataset_id}: {res.steps:,} steps, {res.episodes:,} episodes, mean episode return "
        f"{res.return_mean:.1f}{score}, {res.size_bytes / 1e6:.1f} MB, {res.wall_s:.0f} s",
        f"  folder: {res.path}",
        f"  reference scores: {res.ref_note}",
    ]
    if td3:
        lines.append(f"  TD3 behaviour run {td3['run']}: medium = step {td3['medium_step']} (return "
                     f"{td3['medium_return']:.1f}), expert = step {td3['expert_step']} (return {td3['expert_return']:.1f})")
    return "\n".join(lines)


def _collect_from_args(args: argparse.Namespace, b: str, td3: TD3Config, measure: bool = False) -> CollectResult:
    return collect(
        args.env_id, b, dataset_id=args.dataset_id, steps=args.steps, seed=args.seed, noise=args.noise,
        policy=args.policy, td3=td3, behaviour_dir=args.behaviour_dir, ref_episodes=args.ref_episodes,
        ref_scores=not args.no_ref_scores, ref_min_score=args.ref_min_score, ref_max_score=args.ref_max_score,
        expert_policy=args.expert_policy, measure_ref_scores=measure, overwrite=args.overwrite,
        datasets_path=args.datasets_path, progress=not args.no_progress, author=args.author,
        description=args.description, compact=args.compact,
    )


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``collect`` sub-command to a CLI's ``add_subparsers()`` object (sets ``func=run``)."""
    p = subparsers.add_parser(
        "collect", help="write a Minari dataset (random / policy / TD3 expert, medium, medium-replay, medium-expert)",
        description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter,
    )
    add_arguments(p)
    p.set_defaults(func=run)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m metaconstraint.data.collect", description=__doc__.split("\n\n")[0])
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
