"""The ``metaconstraint`` command: train, eval, collect, plot, report, sweep, export.

``metaconstraint train`` with no arguments trains ASPC on the built-in Pendulum dataset with
the ``quick`` preset (a few minutes on 2 CPU cores) and prints the normalised score, the
alpha trajectory and where the plots are.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from .cliargs import HelpFormatter, nonneg_int, number, positive_int

__all__ = ["build_parser", "main"]

EXAMPLES = """examples:
  metaconstraint train                                   # ASPC on the built-in Pendulum data (quick preset)
  metaconstraint train --algo td3bc --seed 1 --run-dir runs/td3bc-s1
  metaconstraint train --dataset hopper-medium-v2.hdf5 --preset paper --set reward_scale=none
  metaconstraint train --resume runs/td3bc-s1            # continue a stopped or interrupted run exactly
  metaconstraint eval --run-dir runs/td3bc-s1 --episodes 20
  metaconstraint plot runs/aspc-* runs/td3bc-*           # overlay, mean ± std over seeds
  metaconstraint report runs/
  metaconstraint sweep --algo aspc --seeds 0-2 --set constraint.lr=2e-3,0.25 --out runs/sweep   # 6 runs on Ray
  metaconstraint export --run-dir runs/td3bc-s1 --out policy.pt
  metaconstraint data info my_robot_log.hdf5             # sizes, returns, reference scores, env of a dataset
"""


def _add_own_data(a: Any, what: str) -> None:
    """--env-id, --ref-min-score, --ref-max-score (train and eval)."""
    a("--env-id", metavar="ENV_ID",
      help=f"Gymnasium env {what} evaluates in, when the dataset names none or to override it (e.g. Hopper-v5)")
    a("--ref-min-score", type=number, metavar="R0",
      help="return that scores 0 (with --ref-max-score), when the dataset has no reference scores or to override them; "
           "without any, scores are raw returns")
    a("--ref-max-score", type=number, metavar="R100", help="return that scores 100 (with --ref-min-score)")


def _algo(text: str) -> str:
    from .config import ConfigError, algo_class

    try:
        algo_class(text)
    except ConfigError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


def _algo_names() -> str:
    try:
        from .algos import ALGORITHMS

        return ", ".join(sorted(ALGORITHMS))
    except Exception:  # pragma: no cover - a broken algorithm module should not break --help
        return "see metaconstraint.algos.ALGORITHMS"


# ----------------------------------------------------------------------------- parser
def _add_train(sub: Any) -> None:
    from .config import PRESETS

    q, p = PRESETS["quick"], PRESETS["paper"]
    t = sub.add_parser(
        "train",
        help="train an agent on an offline dataset (no arguments: ASPC on the built-in Pendulum data)",
        description=(
            "Train an offline RL agent into a run directory (config.yaml, metrics.csv/jsonl, checkpoints/, "
            "plots/, summary.json). Settings are layered: preset < --config file < flags < --set. "
            "With no arguments: ASPC on the built-in pendulum-medium dataset, quick preset."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EXAMPLES,
    )
    a = t.add_argument
    a("--algo", type=_algo, help=f"algorithm: {_algo_names()} (default: aspc)")
    a("--dataset", metavar="ID_OR_PATH",
      help="built-in name, local Minari id or folder, D4RL-format .hdf5, or .npz (default: pendulum-medium)")
    a("--preset", choices=list(PRESETS),
      help="base settings: quick (narrow nets, short run; the default for built-in datasets) or paper "
           "(the algorithm's published sizes; the default otherwise)")
    a("--steps", type=positive_int, metavar="N",
      help=f"gradient steps (default: {q['steps']} quick, {p['steps']} paper)")
    a("--eval-every", type=nonneg_int, metavar="M",
      help=f"steps between evaluations, 0 = only at the end (default: {q['eval_every']} quick, {p['eval_every']} paper)")
    a("--eval-episodes", type=positive_int, metavar="E", help=f"episodes per evaluation (default: {q['eval_episodes']})")
    a("--seed", type=nonneg_int, metavar="S", help="seed of networks, batches and evaluation episodes (default: 0)")
    a("--seeds", metavar="0-7",
      help="train several seeds in one process, their updates vmapped together (td3bc, aspc): a range 0-7 or a "
           "list 0,3,7; each seed gets its own run directory RUN_DIR/seed<S> (resume them all with --resume RUN_DIR)")
    a("--compile", action="store_true",
      help="capture the whole update with torch.compile (CUDA graphs on a GPU; td3bc, aspc): equal to the eager "
           "update up to float32 rounding; compiling takes a minute or more on a CPU")
    a("--batch-size", type=positive_int, metavar="B", help="minibatch size (default: 256, or the algorithm's own with paper)")
    a("--run-dir", metavar="DIR", help="where the run is written (default: runs/<algo>-<dataset>-seed<S>-<time>)")
    a("--config", metavar="FILE.yaml", help="YAML settings (a run's config.yaml works); flags and --set override it")
    a("--set", action="append", nargs="+", default=[], metavar="KEY=VALUE",
      help="override any setting: a run setting (steps=5000), agent.<field> (agent.alpha=3) or a bare "
           "algorithm field (alpha=3); a learned coefficient's update (aspc, *-adaptive) under constraint. "
           "(constraint.lr=1e-3, constraint.every=5, constraint.horizon=5); repeatable")
    a("--device", metavar="cpu|cuda", help="training device (default: cpu)")
    a("--log-every", type=positive_int, metavar="K", help=f"steps per metrics row (default: {q['log_every']} quick, {p['log_every']} paper)")
    a("--checkpoint-every", type=nonneg_int, metavar="K",
      help=f"steps between checkpoints, 0 = only at the end (default: {q['checkpoint_every']} quick, {p['checkpoint_every']} paper)")
    a("--keep-checkpoints", type=positive_int, metavar="N", help="how many recent checkpoints to keep (default: 3)")
    a("--resume", metavar="DIR", help="continue the run in DIR from its newest checkpoint (takes no other settings)")
    a("--stop-after", type=positive_int, metavar="N",
      help="checkpoint and stop once N total steps are done (continue later with --resume)")
    a("--threads", type=positive_int, metavar="T",
      help="torch CPU threads (default: $OMP_NUM_THREADS if set; else 1 with the quick preset, whose small networks "
           "run fastest on one thread, and torch's choice with paper)")
    a("--no-plots", action="store_true", help="do not draw plots at the end")
    a("--quiet", action="store_true", help="no progress bar and no status lines")
    a("--checkpoint", metavar="STEP|PATH",
      help="with --resume: continue from this checkpoint (default: the newest intact one)")
    a("--trust-env-spec", action="store_true",
      help="build the dataset's env spec even if it names code outside installed, trusted environment packages")
    _add_own_data(a, "the run")
    a("--dataset-sha256", metavar="HEX",
      help="train only on this build of the data: its content sha256 as `data info` prints it (8 or more hex "
           "digits); another build stops the run before step 1")
    a("--wandb", nargs="?", const="metaconstraint", metavar="PROJECT",
      help="also log to Weights & Biases (extra wandb) under PROJECT (default project: metaconstraint), offline "
           "into RUN_DIR/wandb unless WANDB_MODE=online is set; upload later with wandb sync")
    t.set_defaults(func=cmd_train)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="metaconstraint",
        description="Adaptive policy constraints for offline RL (ASPC and baselines): train, evaluate, plot, report, export.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EXAMPLES,
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"metaconstraint {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_train(sub)

    e = sub.add_parser("eval", help="evaluate a run's policy in its environment", formatter_class=HelpFormatter)
    e.add_argument("--run-dir", required=True, metavar="DIR", help="the run directory")
    e.add_argument("--checkpoint", metavar="STEP|PATH", help="a step number or checkpoint file (default: the newest)")
    e.add_argument("--episodes", type=positive_int, default=10, help="episodes to run")
    e.add_argument("--seed", type=nonneg_int, default=None, help="first episode's reset seed (default: the run's eval seed)")
    e.add_argument("--device", default="cpu", help="device for the policy")
    e.add_argument("--json", action="store_true", help="print only the result as JSON")
    e.add_argument("--trust-env-spec", action="store_true",
                   help="build the checkpoint's env spec even if it names code outside installed, trusted environment packages")
    _add_own_data(e.add_argument, "the policy")
    e.set_defaults(func=cmd_eval)

    try:
        from .data.collect import register
    except Exception as err:  # pragma: no cover - the data package is required; say why it is missing
        c = sub.add_parser("collect", help="write a Minari dataset (unavailable: see --help)")
        c.set_defaults(func=lambda args, _e=err: _fail(f"collect is unavailable: {_e}"))
    else:
        register(sub)

    pl = sub.add_parser("plot", help="plot alpha, losses and score vs step for one or more runs (mean ± std over seeds)",
                        formatter_class=HelpFormatter)
    pl.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories, or folders holding them")
    pl.add_argument("--out", metavar="DIR", help="output folder (default: RUN_DIR/plots for one run, ./plots for several)")
    pl.add_argument("--pool", nargs="+", default=[], metavar="SETTING",
                    help="average runs whose settings differ only in these (default: runs with different settings "
                         "are separate lines)")
    pl.set_defaults(func=cmd_plot)

    r = sub.add_parser("report", help="markdown table of final normalised scores, configuration x dataset, over seeds",
                       formatter_class=HelpFormatter)
    r.add_argument("runs_dir", nargs="+", metavar="RUNS_DIR", help="folder(s) holding run directories")
    r.add_argument("--out", metavar="FILE.md", help="also write the report to this file")
    r.add_argument("--title", default="Results", help="report heading")
    r.add_argument("--per-seed", action="store_true",
                   help="add each run's final score (and a learned coefficient's end value and range)")
    r.add_argument("--pool", nargs="+", default=[], metavar="SETTING",
                   help="average runs whose settings differ only in these, e.g. --pool alpha (default: a column is one "
                        "configuration; runs with different settings are never averaged)")
    r.add_argument("--ref-min-score", type=number, metavar="R0",
                   help="with --ref-max-score: normalise the final returns of runs that have no reference scores of "
                        "their own (default: such runs are shown with raw returns, outside the averages)")
    r.add_argument("--ref-max-score", type=number, metavar="R100", help="the return that scores 100 (with --ref-min-score)")
    r.add_argument("--env-id", metavar="ENV_ID",
                   help="apply --ref-min-score/--ref-max-score only to runs in this env (default: every run without "
                        "reference scores)")
    r.set_defaults(func=cmd_report)

    d = sub.add_parser("data", help="inspect a dataset: data info ID_OR_PATH",
                       description="Inspect datasets without training on them.")
    dsub = d.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    di = dsub.add_parser("info", help="sizes, returns, reference scores and env of a dataset", formatter_class=HelpFormatter,
                         description="What a dataset holds: transitions, episodes, lengths, returns, reference scores "
                                     "(and the data's normalised score), the evaluation env, and what the loader noted.")
    di.add_argument("dataset", metavar="ID_OR_PATH",
                    help="built-in name, local Minari id or folder, D4RL-format .hdf5, or .npz")
    di.add_argument("--env-id", metavar="ENV_ID", help="the env to check the data against, when it names none")
    di.add_argument("--json", action="store_true", help="print the summary as JSON")
    di.add_argument("--trust-env-spec", action="store_true",
                    help="build the dataset's env spec even if it names code outside installed, trusted environment packages")
    di.set_defaults(func=cmd_data_info)
    d.set_defaults(func=lambda args: _fail("data takes a subcommand: metaconstraint data info ID_OR_PATH"))

    from .sweep import add_parser as add_sweep

    add_sweep(sub)

    x = sub.add_parser("export", help="write a run's policy as TorchScript (normalisation built in; needs only torch)",
                       formatter_class=HelpFormatter)
    x.add_argument("--run-dir", required=True, metavar="DIR", help="the run directory")
    x.add_argument("--out", required=True, metavar="policy.pt", help="output file")
    x.add_argument("--checkpoint", metavar="STEP|PATH", help="a step number or checkpoint file (default: the newest)")
    x.add_argument("--format", choices=("torchscript", "onnx"), default="torchscript",
                   help="torchscript (needs only torch to run) or onnx (extra onnx; input obs (batch, obs_dim), output "
                        "action)")
    x.set_defaults(func=cmd_export)
    return parser


# ----------------------------------------------------------------------------- commands
class _Fail(Exception):
    pass


def _fail(msg: str) -> int:
    raise _Fail(msg)


def _flags(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "algo": args.algo, "dataset": args.dataset, "preset": args.preset, "steps": args.steps,
        "eval_every": args.eval_every, "eval_episodes": args.eval_episodes, "seed": args.seed,
        "batch_size": args.batch_size, "device": args.device, "log_every": args.log_every,
        "checkpoint_every": args.checkpoint_every, "keep_checkpoints": args.keep_checkpoints,
        "env_id": args.env_id, "ref_min_score": args.ref_min_score, "ref_max_score": args.ref_max_score,
        "dataset_sha256": args.dataset_sha256,
    }


def cmd_train(args: argparse.Namespace) -> int:
    from .config import resolve
    from .seeds import SeedsTrainer, seeds_root_of
    from .training import Trainer, default_run_dir

    import torch

    t_start = time.perf_counter()
    if args.wandb:
        import importlib.util

        if importlib.util.find_spec("wandb") is None:
            return _fail("--wandb needs the wandb package: pip install -e '.[wandb]' (or pip install wandb)")
    if args.threads:
        torch.set_num_threads(args.threads)
    sets = [s for group in args.set for s in group]
    echo = None if args.quiet else print
    progress = False if args.quiet else None
    if args.resume:
        given = [f"--{k.replace('_', '-')}" for k, v in _flags(args).items() if v is not None and k != "device"]
        given += ["--config"] if args.config else []
        given += ["--set"] if sets else []
        given += ["--run-dir"] if args.run_dir else []
        given += ["--seeds"] if args.seeds else []
        if given:
            return _fail(
                f"--resume continues a run with the settings in its config.yaml; drop {', '.join(given)} "
                "(only --device, --checkpoint, --stop-after, --threads, --quiet, --no-plots, --trust-env-spec, "
                "--compile and --wandb go with --resume)"
            )
        kw = dict(progress=progress, echo=echo, plots=not args.no_plots, trust_env_spec=args.trust_env_spec,
                  wandb=args.wandb)
        if seeds_root_of(args.resume) is not None:
            if args.checkpoint:
                return _fail("--checkpoint picks one run's checkpoint; resume the seeds' directories one by one for that")
            trainer = SeedsTrainer.resume(args.resume, compile=args.compile, device=args.device, **kw)
        else:
            trainer = Trainer.resume(args.resume, device=args.device, checkpoint=args.checkpoint, **kw)
    else:
        config = resolve(file=args.config, flags=_flags(args), sets=sets)
        if args.checkpoint:
            return _fail("--checkpoint goes with --resume (it picks the checkpoint a run continues from)")
        if not args.quiet:
            from .config import preset_reason

            print(f"{config.algo} on {config.dataset}: {preset_reason(config)}", flush=True)
        kw = dict(progress=progress, echo=echo, plots=not args.no_plots, trust_env_spec=args.trust_env_spec,
                  wandb=args.wandb)
        if args.seeds is not None:
            from .sweep import SpecError, parse_seeds

            if args.seed is not None:
                return _fail("give --seed (one run) or --seeds (several in one process), not both")
            try:
                seeds = parse_seeds(args.seeds, "--seeds")
            except SpecError as err:
                return _fail(str(err))
            root = Path(args.run_dir) if args.run_dir else default_run_dir(config, seeds=args.seeds.replace(",", "_"))
            trainer = SeedsTrainer.new(config, seeds, root, compile=args.compile, **kw)
        else:
            trainer = Trainer(config, Path(args.run_dir) if args.run_dir else default_run_dir(config), **kw)
    if args.compile and isinstance(trainer, Trainer):
        trainer = SeedsTrainer([trainer], compile=True)  # one seed, the captured update
    first = trainer.trainers[0] if isinstance(trainer, SeedsTrainer) else trainer
    if not args.threads and "OMP_NUM_THREADS" not in os.environ and first.config.preset == "quick":
        torch.set_num_threads(1)
    results = trainer.train(stop_after=args.stop_after)
    if args.wandb:  # wait until W&B's service has written and closed its files (the .wandb log is buffered)
        import wandb

        wandb.teardown()
    results = results if isinstance(results, list) else [results]
    total = time.perf_counter() - t_start
    for result in results:
        s = result.summary
        if not args.quiet:
            _print_train_summary(result, total)
        else:
            print(json.dumps({k: s[k] for k in ("status", "step", "final_score", "coef_end", "wall_s")}))
    if len(results) > 1 and not args.quiet:
        root = results[0].run_dir.parent
        print(f"\n{len(results)} seeds in {root}; compare them with: metaconstraint report {root} --per-seed")
    interrupted = [r for r in results if r.status == "interrupted"]
    if interrupted:
        return 130 if interrupted[0].signal == signal.SIGINT else 143
    return 0


def _print_train_summary(result: Any, total_s: float) -> None:
    from .outputs import format_duration

    s = result.summary
    run_dir = result.run_dir
    lines = []
    verb = {"finished": "finished", "stopped": "stopped (as asked)", "interrupted": "interrupted"}.get(result.status, result.status)
    lines.append(
        f"\n{verb}: {s['algo']} on {s['dataset']}, step {s['step']}/{s['steps']}, "
        f"{format_duration(total_s)} in all ({s['steps_per_s']} steps/s while training)"
    )
    if s.get("final_score") is not None:
        lines.append(
            f"normalised score: {s['final_score']:.1f} ± {s['final_score_std']:.1f} over the episodes "
            f"(return {s['final_return']:.1f}) at step {s['final_eval_step']}; best {s['best_score']:.1f} at step "
            f"{s['best_score_step']}"
        )
    elif s.get("final_return") is not None:
        lines.append(f"return: {s['final_return']:.1f} at step {s['final_eval_step']} (no reference scores to normalise)")
    key = s.get("coefficient") or "alpha"
    if s.get("coef_end") is not None:
        mn = f"{s['coef_min']:.3f}" + (f" (step {s['coef_min_step']})" if s.get("coef_min_step") is not None else "")
        mx = f"{s['coef_max']:.3f}" + (f" (step {s['coef_max_step']})" if s.get("coef_max_step") is not None else "")
        lines.append(f"{key}: start {s['coef_start']:.3f}, min {mn}, max {mx}, end {s['coef_end']:.3f}")
    if s.get("plots"):
        first = Path(s["plots"][0]).parent
        lines.append(f"plots: {first}/ ({', '.join(Path(p).name for p in s['plots'])})")
    lines.append(f"run directory: {run_dir}")
    if result.status in ("interrupted", "stopped"):
        lines.append(f"checkpoint {result.checkpoint}; continue with: metaconstraint train --resume {run_dir}")
    else:
        lines.append(
            f"next: metaconstraint eval --run-dir {run_dir} --episodes 20 | "
            f"metaconstraint export --run-dir {run_dir} --out policy.pt"
        )
    print("\n".join(lines))


def cmd_eval(args: argparse.Namespace) -> int:
    from .evaluation import evaluate
    from .rundir import load_run

    run = load_run(args.run_dir, args.checkpoint, device=args.device, echo=lambda text: print(text, file=sys.stderr))
    seed = run.config.resolved_eval_seed() if args.seed is None else args.seed
    given_ref = _ref_pair(args)
    ref = given_ref if given_ref is not None else run.reference()
    target = args.env_id if args.env_id else run.env_target(args.trust_env_spec)  # typed by the user: trusted
    if args.env_id:
        from .evaluation import check_eval_env

        try:
            check_eval_env(target, seed, int(run.env["obs_dim"]), int(run.env["act_dim"]))
        except ValueError as err:
            return _fail(f"--env-id {args.env_id}: {err}")
    res = evaluate(
        run.agent, target, episodes=args.episodes, seed=seed, normalizer=run.normalizer,
        n_envs=min(10, args.episodes), ref=ref, device=args.device, progress=not args.json and _tty(),
    )
    res.update(run_dir=str(run.run_dir), checkpoint=str(run.checkpoint), step=run.step, algo=run.config.algo,
               dataset=run.config.dataset)
    out = Path(args.run_dir) / "evals" / f"step_{run.step:08d}_episodes{args.episodes}_seed{seed}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    if args.json:
        print(json.dumps(res))
        return 0
    score = (
        f"normalised score {res['score_mean']:.1f} ± {res['score_std']:.1f}, "
        if res["score_mean"] is not None else ""
    )
    print(
        f"{run.config.algo} on {run.config.dataset} at step {run.step}: {score}return {res['return_mean']:.1f} ± "
        f"{res['return_std']:.1f} over {args.episodes} episodes of {res['env_id']} (seeds {seed}..{seed + args.episodes - 1})"
    )
    print(f"written to {out}")
    return 0


def _ref_pair(args: argparse.Namespace) -> tuple[float, float] | None:
    """--ref-min-score/--ref-max-score as a pair (both or neither, and different), or None."""
    if (args.ref_min_score is None) != (args.ref_max_score is None):
        _fail("--ref-min-score and --ref-max-score go together (the returns that score 0 and 100): give both")
    if args.ref_min_score is None:
        return None
    if args.ref_min_score == args.ref_max_score:
        _fail(f"--ref-min-score and --ref-max-score are both {args.ref_min_score}; no score can be computed")
    return args.ref_min_score, args.ref_max_score


def _tty() -> bool:
    try:
        return sys.stderr.isatty()
    except Exception:
        return False


def cmd_plot(args: argparse.Namespace) -> int:
    from .plotting import plot_runs
    from .rundir import find_runs

    try:
        runs = find_runs(args.runs)
    except FileNotFoundError as err:
        return _fail(str(err))
    out = Path(args.out) if args.out else (runs[0] / "plots" if len(runs) == 1 else Path("plots"))
    try:
        paths = plot_runs(runs, out, pool=args.pool)
    except ValueError as err:
        return _fail(str(err))
    print(f"{len(runs)} run(s) plotted:")
    for p in paths:
        print(f"  {p}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .report import report_markdown

    given_ref = _ref_pair(args)
    if args.env_id and args.ref_min_score is None:
        return _fail("--env-id picks the runs that --ref-min-score/--ref-max-score normalise; give those too")
    ref = given_ref
    try:
        text = report_markdown(args.runs_dir, title=args.title, per_seed=args.per_seed, pool=args.pool, ref=ref,
                               ref_env=args.env_id)
    except (FileNotFoundError, ValueError) as err:
        return _fail(str(err))
    print(text, end="")
    if args.out:
        Path(args.out).write_text(text)
    return 0


def cmd_data_info(args: argparse.Namespace) -> int:
    import warnings

    from .data.info import dataset_info, info_text

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        info = dataset_info(args.dataset, env_id=args.env_id, trust_env_spec=args.trust_env_spec)
    for w in caught:  # loader warnings are part of what the data holds: shown as notes
        text = str(w.message)
        if text not in info["notes"]:
            info["notes"].append(text)
    print(json.dumps(info) if args.json else info_text(info))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .export import export_policy

    meta = export_policy(args.run_dir, args.out, args.checkpoint, format=args.format)
    if args.format == "onnx":
        print(f"wrote {args.out}: {meta['algo']} policy for {meta['env_id']} (step {meta['step']}) as ONNX: input 'obs' "
              f"(batch, {meta['obs_dim']}) raw observations, output 'action' (batch, {meta['act_dim']}); run with e.g. "
              f"onnxruntime.InferenceSession('{args.out}').run(None, {{'obs': obs}})")
        return 0
    print(
        f"wrote {args.out}: {meta['algo']} policy for {meta['env_id']} (step {meta['step']}), raw observations in, "
        f"actions out. Load with torch.jit.load('{args.out}') (tensors in, needs only torch) or "
        f"metaconstraint.export.load_policy('{args.out}') (numpy or tensors in; no code from the file runs); "
        f"record data with it: metaconstraint collect ENV_ID --behaviour policy --policy {args.out}"
    )
    return 0


# ----------------------------------------------------------------------------- entry point
def _renamed_settings_as_notes() -> None:
    """Show a setting given by its old name as one ``note:`` line (not Python's two-line warning)."""
    import warnings

    from .config import RenamedSettingWarning

    show = warnings.showwarning
    if getattr(show, "renamed_as_notes", False):
        return

    def showwarning(message: Any, category: type, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
        if issubclass(category, RenamedSettingWarning):
            print(f"note: {message}", file=sys.stderr if file is None else file)
        else:
            show(message, category, filename, lineno, file, line)

    showwarning.renamed_as_notes = True  # type: ignore[attr-defined]
    warnings.showwarning = showwarning


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 2 bad input, 3 diverged, 130/143 interrupted)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        print("\nStart with: metaconstraint train   (ASPC on the built-in Pendulum data, a few minutes on a laptop)")
        return 0
    if "OMP_NUM_THREADS" not in os.environ and args.command in ("eval", "export", "plot", "report"):
        import torch

        torch.set_num_threads(1)  # small policies: one thread is fastest and polite to other jobs
    from .config import ConfigError
    from .rundir import RunError
    from .training import TrainingDiverged

    try:
        from .data import DataError
    except Exception:  # pragma: no cover
        DataError = ValueError  # type: ignore[misc,assignment]
    _renamed_settings_as_notes()
    try:
        return int(args.func(args) or 0)
    except TrainingDiverged as err:
        print(f"error: {err}", file=sys.stderr)
        return 3
    except (_Fail, ConfigError, RunError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (ValueError, FileExistsError, FileNotFoundError) as err:
        if args.command != "collect":  # elsewhere these are bugs: keep the traceback
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\naborted (no checkpoint written for the current step)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
