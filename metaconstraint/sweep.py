"""``metaconstraint sweep``: every combination of a grid as its own ``train`` run, on Ray.

A sweep is a list of runs planned from a YAML spec (read with ``yaml.safe_load``: data only) or
from the same grid given as flags. Each run is one Ray task (``num_cpus``/``num_gpus`` per run,
``max_retries`` for a worker that dies) that starts ``python -m metaconstraint train`` in a child
process, into ``<out>/<variant>/<variant>-<dataset>-s<seed>``. The child is the command a user
would type, so the run-directory lock, checkpoint checks, exact resume and exit codes come with it,
a crash stays inside one run, and no state crosses runs (a fresh interpreter each time).

Idempotent: a finished run is skipped, a started one continues with ``train --resume`` (from its
newest intact checkpoint, or from step 0 if it was stopped before the first one). A worker killed mid-run (even
with SIGKILL) takes its child with it (``PR_SET_PDEATHSIG`` on Linux); Ray retries the task, which
resumes the run. Ctrl-C or SIGTERM stops the sweep (also one started in the background, where the shell
ignores SIGINT): the running runs write a checkpoint and stop, and the same command continues them; a run
whose own ``train`` was stopped the same way counts as interrupted, not failed. Results come back through
the filesystem: ``--out`` must be a folder every node sees (a shared filesystem on a cluster), because
checkpoints must outlive any worker.

Spec::

    out: experiments/runs                # optional; --out overrides it
    settings: {steps: 8000, actor_hidden: [64, 64]}   # every run (train settings, bare algorithm fields allowed)
    grids:                               # each grid is crossed; the runs of all grids together
      - configs:                         # optional: sets of settings that go together (one per variant)
          - {name: aspc, algo: aspc}
          - {name: td3bc-robust, algo: td3bc, critic: robust}
        dataset: [metaconstraint/pendulum/medium-v0, metaconstraint/pendulum/expert-v0]
        seed: 0-2                        # or a list
        constraint.lr: [0.25]            # any other key: a list of values, crossed

A setting ``dataset_sha256`` may map each dataset to the build its runs must train on (its content
sha256 or a prefix, as ``data info`` prints it): a run on another build stops before step 1.

``--only PATTERN ...`` runs part of a spec (``select``): the runs whose name matches a shell pattern, in the
order of the patterns, e.g. the runs that fit in the hours a machine is lent, most wanted first.
"""

from __future__ import annotations

import argparse
import dataclasses
import fnmatch
import itertools
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import yaml

from .cliargs import nonneg_int, positive_int
from .config import ConfigError, RunConfig, algo_class, dataset_key, dotted_keys, is_agent_setting, resolve
from .plotting import NOT_RESULT, format_value, settings_key
from .rundir import flat_settings, read_summary
from .training import stop_on_signals

__all__ = ["PlannedRun", "SpecError", "grid_from_flags", "load_spec", "plan", "run_state", "run_sweep", "select"]

INTERRUPT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}  # train's (and the sweep's) exit status when stopped
EXTRA_HINT = "pip install 'metaconstraint[sweep]' (in a checkout: pip install -e '.[sweep]')"
SPEC_KEYS = ("out", "settings", "grids")
_RUN_FIELDS = {f.name for f in dataclasses.fields(RunConfig)} - {"agent"}


class SpecError(ConfigError):
    """A sweep spec or grid that cannot be run; the message says what to change."""


class RunKilled(RuntimeError):
    """The train process died from a signal (not an error of its own): Ray retries the task."""


@dataclass
class PlannedRun:
    name: str  # "<variant>/<variant>-<dataset>-s<seed>", relative to the sweep's folder
    run_dir: Path
    config: dict[str, Any]  # the fully resolved settings (RunConfig.to_dict())

    @property
    def label(self) -> str:
        return self.name.split("/", 1)[-1]


# ----------------------------------------------------------------------------- the grid
def parse_seeds(value: Any, where: str = "seeds") -> list[int]:
    """``"0-2"`` -> [0, 1, 2]; ``"0,3"``, ``[0, 3]`` and ``5`` work too."""
    items = value if isinstance(value, list) else [value]
    seeds: list[int] = []
    for item in items:
        text = str(item).strip()
        for part in filter(None, (p.strip() for p in text.split(","))):
            m = re.fullmatch(r"(\d+)\s*-\s*(\d+)", part)
            if m and int(m.group(1)) <= int(m.group(2)):
                seeds += range(int(m.group(1)), int(m.group(2)) + 1)
            elif part.isdigit():
                seeds.append(int(part))
            else:
                raise SpecError(f"{where}: expected seeds like 0-2, 0,3 or a list of integers >= 0, got {item!r}")
    if not seeds:
        raise SpecError(f"{where}: no seeds given")
    return list(dict.fromkeys(seeds))


def parse_set(items: Iterable[str]) -> dict[str, list[Any]]:
    """``["constraint.lr=0.25,0.5", "actor_hidden=[64,64],[32,32]"]`` -> each key's list of values.

    Values are read as a YAML flow sequence: a comma separates values, brackets keep a list value
    together, quotes keep a comma inside a string."""
    out: dict[str, list[Any]] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key or not text.strip():
            raise SpecError(f"--set expects key=value or key=v1,v2 (e.g. --set constraint.lr=0.25,0.5), got {item!r}")
        try:
            values = yaml.safe_load(f"[{text}]")
        except yaml.YAMLError as err:
            raise SpecError(f"--set {item!r}: cannot read the values ({str(err).splitlines()[0]}); quote a value "
                            "that holds a comma, bracket a list value: actor_hidden=[64,64],[32,32]") from None
        if key in out:
            raise SpecError(f"--set {key} is given twice; list all its values once: --set {key}=v1,v2")
        out[key] = values
    return out


def grid_from_flags(algos: Sequence[str] | None, datasets: Sequence[str] | None, seeds: str | None,
                    sets: Iterable[str], out: str | None) -> dict[str, Any]:
    """The spec that ``--algo ... --dataset ... --seeds ... --set k=v1,v2`` describe (one grid)."""
    grid: dict[str, Any] = {}
    if algos:
        grid["algo"] = list(algos)
    if datasets:
        grid["dataset"] = list(datasets)
    grid["seed"] = parse_seeds(seeds, "--seeds") if seeds is not None else [0]
    settings: dict[str, Any] = {}
    for key, values in parse_set(sets).items():
        if key in ("algo", "dataset", "seed"):
            raise SpecError(f"--set {key}=... : use --{'seeds' if key == 'seed' else key} for that axis")
        if len(values) == 1:
            settings[key] = values[0]  # one value: a setting of every run, not an axis
        else:
            grid[key] = values
    return {"out": out, "settings": settings, "grids": [grid]}


def load_spec(path: str | Path) -> dict[str, Any]:
    """A sweep spec file as plain data (``yaml.safe_load``: tags that would build objects are refused)."""
    p = Path(path)
    if not p.is_file():
        raise SpecError(f"sweep spec '{p}' does not exist")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as err:
        raise SpecError(f"sweep spec '{p}' is not plain YAML data: {' '.join(str(err).split())}") from None
    if not isinstance(data, dict):
        raise SpecError(f"sweep spec '{p}' must be a mapping with {', '.join(SPEC_KEYS)}; it holds a {type(data).__name__}")
    return data


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise SpecError(f"{where} must be a mapping of settings (key: value), not {type(value).__name__}")
    return {str(k): v for k, v in value.items()}


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _nested(values: Mapping[str, Any]) -> dict[str, Any]:
    """Flat settings (``constraint.lr``, ``agent.constraint.lr``, ``steps``) as the run config's layout."""
    algo = str(values.get("algo", RunConfig.algo))
    algo_class(algo)  # an unknown algorithm: its readable error
    out: dict[str, Any] = {}
    agent: dict[str, Any] = dict(_mapping(values.get("agent"), "agent"))
    for key, value in values.items():
        if key == "agent":
            continue
        if key.startswith("agent."):
            agent[key[6:]] = value
        elif key not in _RUN_FIELDS and is_agent_setting(algo, key):
            agent[key] = value
        else:
            out[key] = value  # a run setting, or an unknown key that resolve() names with suggestions
    if agent:
        out["agent"] = agent
    return out


def _slug(text: str) -> str:
    return re.sub(r"[^\w.=,+-]+", "_", text).strip("_") or "run"


def plan(spec: Mapping[str, Any], out: str | Path | None = None) -> list[PlannedRun]:
    """Every run of the spec, resolved and checked (a bad setting anywhere stops before any run starts).

    Runs are ordered seed-major (all seed-0 runs first), so a sweep cut short has complete seeds."""
    unknown = sorted(set(spec) - set(SPEC_KEYS))
    if unknown:
        raise SpecError(f"unknown key(s) in the sweep spec: {', '.join(unknown)}; it takes {', '.join(SPEC_KEYS)}")
    out = out if out is not None else spec.get("out")
    if not out:
        raise SpecError("say where the runs go: --out DIR (or out: DIR in the spec)")
    root = Path(str(out)).expanduser()
    common = _mapping(spec.get("settings"), "settings")
    grids = spec.get("grids")
    if not isinstance(grids, list) or not grids:
        raise SpecError("the sweep spec needs grids: a list of mappings (each: dataset, seed, configs, other keys)")
    runs: list[tuple[int, PlannedRun]] = []
    for gi, grid in enumerate(grids, 1):
        grid = _mapping(grid, f"grids[{gi}]")
        if "seed" in grid and "seeds" in grid:
            raise SpecError(f"grids[{gi}]: give seed or seeds, not both")
        seeds = parse_seeds(grid.pop("seed", grid.pop("seeds", common.get("seed", 0))), f"grids[{gi}].seed")
        has_configs = "configs" in grid
        configs = grid.pop("configs", [{}])
        if not isinstance(configs, list) or not configs:
            raise SpecError(f"grids[{gi}].configs must be a non-empty list of mappings")
        configs = [_mapping(c, f"grids[{gi}].configs[{ci}]") for ci, c in enumerate(configs, 1)]
        grid_datasets = _as_list(grid.pop("dataset")) if "dataset" in grid else None
        axes = {k: _as_list(v) for k, v in grid.items()}
        for k, v in {"dataset": grid_datasets if grid_datasets is not None else [1], **axes}.items():
            if not v:
                raise SpecError(f"grids[{gi}].{k} is an empty list: give at least one value")
        varying = {k for k, v in axes.items() if len(v) > 1}  # what a run directory's name shows
        for seed in seeds:
            for ci, cfg in enumerate(configs, 1):
                where = f"grids[{gi}].configs[{ci}]" if has_configs else f"grids[{gi}]"
                name = cfg.get("name")
                settings = {k: v for k, v in cfg.items() if k != "name"}
                if grid_datasets is not None and "dataset" in settings:
                    raise SpecError(f"{where}: a dataset is given both here and as the grid's dataset list; keep one")
                datasets = grid_datasets or [settings.pop("dataset", common.get("dataset", RunConfig.dataset))]
                for combo in itertools.product(*axes.values()):
                    for dataset in datasets:
                        run = _plan_one(root, common, settings, dict(zip(axes, combo)), name, dataset, seed, where,
                                        varying)
                        runs.append((seed, run))
    ordered = [r for _, r in sorted(runs, key=lambda t: t[0])]  # stable: grid order within a seed
    seen: dict[Path, PlannedRun] = {}
    for r in ordered:
        if r.run_dir in seen:
            raise SpecError(f"two runs of the sweep would share the run directory {r.run_dir}: the grid repeats a "
                            "combination, two configs share a name, or a named config is crossed with a key of several "
                            "values (leave out its name, and the folder names show those values)")
        seen[r.run_dir] = r
    return ordered


def select(runs: Sequence[PlannedRun], patterns: Sequence[str]) -> list[PlannedRun]:
    """The runs whose name matches one of the shell patterns, in the order of the patterns (spec order among the
    runs one pattern matches; a run matched twice comes once). A name is ``<variant>/<variant>-<data>-s<seed>``;
    a pattern without ``/`` is matched against the part after it. A pattern that matches nothing is an error:
    it is a typo more often than a wish."""
    chosen: dict[Path, PlannedRun] = {}
    for pattern in patterns:
        hits = [r for r in runs if fnmatch.fnmatchcase(r.name if "/" in pattern else r.label, pattern)]
        if not hits:
            raise SpecError(f"--only {pattern!r} matches none of the sweep's {len(runs)} runs (names such as "
                            f"{runs[0].label!r}; see them with --dry-run)")
        chosen.update((r.run_dir, r) for r in hits)  # a run already chosen keeps its place
    return list(chosen.values())


def _plan_one(root: Path, common: Mapping[str, Any], cfg: Mapping[str, Any], chosen: Mapping[str, Any],
              name: str | None, dataset: Any, seed: int, where: str, varying: set[str]) -> PlannedRun:
    values = {**common, **cfg, **chosen, "dataset": dataset, "seed": seed}
    pins = values.get("dataset_sha256")
    if isinstance(pins, dict):  # one build per dataset: {dataset: sha256}; a dataset not named is not checked
        values["dataset_sha256"] = pins.get(str(dataset))
    try:
        config = resolve(data=_nested(values))
    except ConfigError as err:
        raise SpecError(f"{where} ({values.get('algo', RunConfig.algo)}, dataset {dataset}, seed {seed}): {err}") from None
    if name is None:
        shown = {**cfg, **{k: v for k, v in chosen.items() if k in varying}}
        parts = [f"{k}={format_value(v)}" for k, v in dotted_keys(shown).items() if k != "algo"]
        name = "-".join([config.algo, *parts])
    variant = _slug(str(name))
    data = config.dataset
    short = dataset_key(Path(data).name if data.lower().endswith((".hdf5", ".h5", ".npz")) else data)
    leaf = f"{variant}-{_slug(short)}-s{seed}"
    return PlannedRun(f"{variant}/{leaf}", root / variant / leaf, config.to_dict())


# ----------------------------------------------------------------------------- one run (a Ray task)
def run_state(run_dir: str | Path) -> str:
    """``new``, ``finished``, ``diverged``, or ``resume`` (started: ``train --resume`` continues it from its
    newest checkpoint, or from step 0 when it was stopped before the first one)."""
    d = Path(run_dir)
    if not (d / "config.yaml").is_file():
        return "new"
    status = read_summary(d).get("status")  # a damaged summary.json counts as none (with a warning)
    if status in ("finished", "diverged"):
        return str(status)
    return "resume"


def _child_setup() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Ray's worker blocks SIGINT and SIGTERM in its signal mask, which a child inherits: unblock them, so
    that train checkpoints and stops on them. On Linux the train process also gets SIGKILL when the worker
    that started it dies (else it would outlive the worker and race the retried task for the run directory)."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass


def _cancellable() -> None:
    """Ray cancels a task by interrupting its worker, which does nothing while SIGINT is ignored there: as it is
    when the cluster (or the sweep that started a local one) was started from a background shell job, which
    ignores SIGINT and passes that on. Let the interrupt through (a KeyboardInterrupt, Python's default)."""
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) in (
            signal.SIG_IGN, signal.SIG_DFL):
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _error_line(log: Path) -> str:
    try:
        lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "no log"
    errors = [ln for ln in lines if ln.startswith("error:") or ln.split(":", 1)[0].endswith(("Error", "Exception"))]
    return (errors or lines or ["no output"])[-1][:300]


def run_one(run_dir: str, config: Mapping[str, Any], threads: int, env: Mapping[str, str], plots: bool,
            cwd: str | None) -> dict[str, Any]:
    """Bring one run to its end: skip it if finished, resume it, or start it; ``train`` runs in a child
    process whose output goes to ``<run_dir>.log``. Returns what the driver prints."""
    d = Path(run_dir)
    host = socket.gethostname()
    if not d.parent.parent.is_dir():
        return {"status": "failed", "error": f"{d.parent.parent} is not visible on {host}: --out must be a folder "
                "every node of the cluster sees (a shared filesystem)"}
    if cwd is not None and not Path(cwd).is_dir():
        return {"status": "failed", "error": f"{cwd} (the folder the sweep started in, where relative paths lead) is "
                f"not visible on {host}: start the sweep from a folder every node sees"}
    _cancellable()
    state = run_state(d)
    if state in ("finished", "diverged"):
        return {"status": "skipped" if state == "finished" else "failed", "summary": read_summary(d),
                "error": "diverged (see its summary.json); delete the run directory to run it again"}
    d.parent.mkdir(parents=True, exist_ok=True)
    log = d.parent / f"{d.name}.log"
    cmd = [sys.executable, "-m", "metaconstraint", "train", "--quiet", "--threads", str(threads)]
    cmd += [] if plots else ["--no-plots"]
    resumed_from = None
    tmp = None
    if state == "resume":  # under the run's lock, train picks the newest intact checkpoint (or step 0)
        steps = sorted(int(p.stem.split("_")[-1]) for p in (d / "checkpoints").glob("step_*.pt")
                       if p.stem.split("_")[-1].isdigit())
        resumed_from = steps[-1] if steps else 0
        cmd += ["--resume", str(d)]
    else:
        tmp = tempfile.NamedTemporaryFile("w", suffix=".yaml", prefix="sweep-", delete=False)
        with tmp:
            yaml.safe_dump(dict(config), tmp, sort_keys=False)
        cmd += ["--config", tmp.name, "--run-dir", str(d)]
    child_env = {**os.environ, **env, "OMP_NUM_THREADS": str(threads)}
    t0 = time.time()
    try:
        with open(log, "a") as f:
            f.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} on {host} (pid {os.getpid()}): {' '.join(cmd)}\n")
            f.flush()
            proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=child_env, cwd=cwd,
                                    preexec_fn=_child_setup)
            try:
                while (code := proc.poll()) is None:  # short waits: Ray's cancel (a KeyboardInterrupt) gets through
                    time.sleep(0.2)
            except KeyboardInterrupt:  # the sweep was stopped (ray.cancel): let train checkpoint, then stop
                proc.send_signal(signal.SIGINT)
                proc.wait(timeout=600)
                raise
    finally:
        if tmp is not None:
            os.unlink(tmp.name)
    if code < 0:
        raise RunKilled(f"{d.name}: train was killed by signal {-code} on {host} (log: {log})")
    summary = read_summary(d)
    result = {"status": outcome(code, summary), "summary": summary, "wall_s": time.time() - t0,
              "resumed_from": resumed_from, "host": host}
    if result["status"] == "failed":
        result["error"] = f"exit status {code}: {_error_line(log)} (log: {log})"
    elif result["status"] == "interrupted":
        result["signal"] = next(int(s) for s, c in INTERRUPT_CODES.items() if c == code)
    return result


def outcome(code: int, summary: Mapping[str, Any]) -> str:
    """What a ``train`` process's exit status and the summary it left say about its run: ``finished``,
    ``interrupted`` (stopped by SIGINT/SIGTERM after writing a checkpoint: the sweep can continue it), else
    ``failed``. Both must agree, as a summary left by an earlier stop may be stale."""
    status = summary.get("status")
    if code == 0 and status == "finished":
        return "finished"
    if code in INTERRUPT_CODES.values() and status == "interrupted":
        return "interrupted"
    return "failed"


# ----------------------------------------------------------------------------- the driver
def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise SpecError(f"sweep runs on Ray, which is not installed: {EXTRA_HINT}") from None
    return ray


def _describe(result: Mapping[str, Any]) -> str:
    s = result.get("summary") or {}
    bits = []
    if s.get("final_score") is not None:
        bits.append(f"score {s['final_score']:.1f}")
    elif s.get("final_return") is not None:
        bits.append(f"return {s['final_return']:.1f}")
    if s.get("coef_end") is not None:
        bits.append(f"{s.get('coefficient') or 'alpha'} {s['coef_end']:.3f}")
    if result.get("wall_s") is not None:
        bits.append(f"{result['wall_s']:.0f} s")
    if result.get("resumed_from") is not None:
        bits.append(f"resumed from step {result['resumed_from']}")
    return ", ".join(bits)


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else (f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s} s")


def _check_existing(runs: Sequence[PlannedRun]) -> None:
    """A run directory that holds other settings than the sweep's: stop before anything runs."""
    bad = []
    for r in runs:
        path = r.run_dir / "config.yaml"
        if not path.is_file():
            continue
        try:
            have = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError:
            have = {}
        same = isinstance(have, dict) and settings_key(have) == settings_key(r.config) and all(
            have.get(k) == r.config.get(k) for k in ("dataset", "seed", "eval_seed"))
        if not same:
            theirs, ours = flat_settings(have if isinstance(have, dict) else {}), flat_settings(r.config)
            diff = [f"{k}: {format_value(theirs.get(k))} there, {format_value(ours.get(k))} in the sweep"
                    for k in dict.fromkeys([*ours, *theirs]) if theirs.get(k) != ours.get(k)
                    and (k not in NOT_RESULT or k in ("seed", "eval_seed"))]
            bad.append(f"{r.run_dir} ({'; '.join(diff[:3]) or 'unreadable config.yaml'})")
    if bad:
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise SpecError(f"{bad[0]}{more} already holds a run with other settings than this sweep's; move it away or "
                        "choose another --out")


def run_sweep(runs: Sequence[PlannedRun], *, address: str | None = None, cpus_per_run: float = 1.0,
              gpus_per_run: float = 0.0, max_parallel: int | None = None, retries: int = 3, plots: bool = False,
              echo: Any = print) -> dict[str, dict[str, Any]]:
    """Bring every run to its end on Ray; returns each run's result by name (status finished, skipped, failed or
    interrupted; after Ctrl-C or SIGTERM the runs still queued are 'not started'). An interrupted result carries
    the signal that stopped it."""
    _check_existing(runs)
    results: dict[str, dict[str, Any]] = {}
    todo = []
    for r in runs:
        state = run_state(r.run_dir)
        if state in ("finished", "diverged"):
            results[r.name] = run_one(str(r.run_dir), r.config, 1, {}, plots, None)  # reads the summary only
        else:
            todo.append((r, state))
    resume = sum(1 for _, st in todo if st == "resume")
    echo(f"sweep: {len(runs)} runs; {sum(1 for v in results.values() if v['status'] == 'skipped')} finished "
         f"already (skipped), {resume} to resume, {len(todo) - resume} to start")
    for name, res in results.items():
        if res["status"] == "failed":
            echo(f"  FAILED {name}: {res['error']}")
    if not todo:
        return results
    ray = _import_ray()
    from tqdm.auto import tqdm

    threads = max(1, int(cpus_per_run))
    env = {k: os.environ[k] for k in ("MINARI_DATASETS_PATH", "MPLBACKEND") if k in os.environ}
    cwd = os.getcwd()
    started = not ray.is_initialized()
    if started:
        # without an address Ray would join a `ray start` cluster running on this machine (its own default);
        # the sweep's default is a new local instance of its own, unless RAY_ADDRESS names a cluster
        address = address or os.environ.get("RAY_ADDRESS") or "local"
        kw: dict[str, Any] = {"address": address, "log_to_driver": False}
        if address == "local":  # a local instance: small object store (only configs and summaries travel)
            kw.update(include_dashboard=False, object_store_memory=128 * 1024 ** 2)
        ray.init(**kw)
    task = ray.remote(run_one).options(num_cpus=cpus_per_run, num_gpus=gpus_per_run, max_retries=retries,
                                       retry_exceptions=[RunKilled])
    queue = list(todo)
    pending: dict[Any, PlannedRun] = {}
    root = Path(os.path.commonpath([str(r.run_dir.parent.parent.resolve()) for r in runs]))
    root.mkdir(parents=True, exist_ok=True)  # workers check that they see it (a shared filesystem)
    tty = sys.stderr.isatty()
    bar = tqdm(total=len(runs), initial=len(results), unit="run", desc="sweep", dynamic_ncols=True, file=sys.stderr,
               disable=not tty)
    t0, done0 = time.time(), len(results)

    def line(text: str) -> str:  # without a terminal (no bar), each line carries the count and the ETA
        if tty:
            return text
        done = len(results)
        eta = (time.time() - t0) / max(1, done - done0) * (len(runs) - done)
        return f"[{done}/{len(runs)}, ETA {_duration(eta) if done < len(runs) else '0 s'}]{text}"

    stop: list[int] = []
    restore_signals = stop_on_signals(lambda signum: bool(stop.append(signum)))  # KeyboardInterrupt on either signal
    try:
        while queue or pending:
            while queue and (max_parallel is None or len(pending) < max_parallel):
                r, _ = queue.pop(0)
                pending[task.remote(str(r.run_dir.resolve()), r.config, threads, env, plots, cwd)] = r
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)  # short waits: Ctrl-C gets through
            for ref in ready:
                r = pending.pop(ref)
                try:
                    res = ray.get(ref)
                except ray.exceptions.RayError as err:  # retries used up (worker died, or train killed)
                    lines = [ln for ln in str(err).splitlines() if ln.strip()]
                    res = {"status": "failed", "error": f"{type(err).__name__}: {lines[-1] if lines else err} "
                           f"(after {retries} retries)"}
                results[r.name] = res
                if res["status"] == "failed":
                    bar.write(line(f"  FAILED {r.name}: {res['error']}"), file=sys.stdout)
                elif res["status"] == "interrupted":  # its train was stopped by a signal of its own
                    bar.write(line(f"  interrupted {r.name} ({signal.Signals(res['signal']).name}, checkpoint at "
                                   f"step {res['summary'].get('step')}): {_describe(res)}"), file=sys.stdout)
                else:
                    bar.write(line(f"  {res['status']:>8} {r.name}: {_describe(res)}"), file=sys.stdout)
                bar.update(1)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the running runs write a checkpoint and stop (train's own handling)
        sig = stop[0] if stop else signal.SIGINT
        bar.write(f"stopping ({signal.Signals(sig).name}): the running runs write a checkpoint and stop", file=sys.stdout)
        for ref in pending:
            ray.cancel(ref)
        ray.wait(list(pending), num_returns=len(pending), timeout=300)
        for r in pending.values():
            results[r.name] = {"status": "interrupted", "signal": int(sig)}
        for r, _ in queue:
            results[r.name] = {"status": "not started", "signal": int(sig)}
    finally:
        restore_signals()
        bar.close()
        if started:
            ray.shutdown()
    return results


def cli_sweep(args: argparse.Namespace) -> int:
    """``metaconstraint sweep``: plan, run on Ray, print one line per run and the report; exit 1 if a run failed."""
    flags = [f for f, v in (("--algo", args.algo), ("--dataset", args.dataset), ("--seeds", args.seeds),
                            ("--set", args.set)) if v]
    if args.spec and flags:
        raise SpecError(f"give a spec file or the grid flags ({', '.join(flags)}), not both")
    if args.spec:
        spec = load_spec(args.spec)
    else:
        spec = grid_from_flags(args.algo, args.dataset, args.seeds, [s for group in args.set for s in group], args.out)
    if not args.dry_run:
        _import_ray()  # before planning: without the extra, one line and nothing else
    planned = plan(spec, args.out)
    runs = select(planned, args.only) if args.only else planned
    if args.gpus_per_run > 0 and any(not str(r.config.get("device", "cpu")).startswith("cuda") for r in runs):
        print("note: --gpus-per-run reserves GPUs, but some runs train on the CPU; add --set device=cuda", file=sys.stderr)
    if args.dry_run:
        for r in runs:
            print(f"{run_state(r.run_dir):>9}  {r.run_dir}")
        print(f"{len(runs)} runs planned" + (f" (--only: {len(runs)} of the sweep's {len(planned)})" if args.only else "")
              + " (dry run: nothing started)")
        return 0
    results = run_sweep(runs, address=args.address, cpus_per_run=args.cpus_per_run, gpus_per_run=args.gpus_per_run,
                        max_parallel=args.max_parallel, retries=args.retries, plots=args.plots)
    stopped = [res for res in results.values() if res["status"] in ("interrupted", "not started")]
    if stopped:  # the report waits for the end of the sweep: report.md stays as the last complete sweep left it
        print(f"sweep interrupted: {len(stopped)} run(s) not finished; run the same command again to continue them")
        return INTERRUPT_CODES.get(signal.Signals(stopped[0].get("signal", signal.SIGINT)), 130)
    failed = [n for n, res in results.items() if res["status"] == "failed"]
    from .report import report_markdown

    have = [r.run_dir for r in planned if (r.run_dir / "config.yaml").is_file()]  # the whole sweep's, even with --only
    if have:
        text = report_markdown(have, title=f"Sweep: {args.spec or 'grid from flags'}")
        print("\n" + text, end="")
        out = runs[0].run_dir.parent.parent / "report.md"
        out.write_text(text)
        print(f"(also written to {out})")
    print(f"sweep done: {len(results) - len(failed)} of {len(results)} runs finished"
          + (f"; {len(failed)} failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


def add_parser(sub: Any) -> None:
    """The ``sweep`` subcommand (registered by ``metaconstraint.cli``)."""
    def resources(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number >= 0, got '{text}'") from None
        if v < 0:
            raise argparse.ArgumentTypeError(f"must be >= 0, got {v}")
        return v

    s = sub.add_parser(
        "sweep", help="run a grid of train runs (algorithms x datasets x seeds x settings) on Ray",
        description=(
            "Run every combination of a grid as its own `train` run, on a local Ray instance (default) or an existing "
            "Ray cluster (--address). Each run gets the usual run directory under the results folder; finished runs "
            "are skipped, interrupted ones resume, a run whose worker dies is retried and resumes. At the end the "
            "report table of the sweep is printed (and written to OUT/report.md). Needs the 'sweep' extra (Ray)."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "examples:\n"
            "  metaconstraint sweep experiments/suite.yaml\n"
            "  metaconstraint sweep --algo aspc td3bc --dataset pendulum-medium --seeds 0-2 --out runs/grid\n"
            "  metaconstraint sweep --algo aspc --seeds 0-1 --set constraint.lr=2e-3,0.25 --set steps=4000 --out runs/lr\n"
            "  metaconstraint sweep SPEC.yaml --address ray-head:6379 --out /shared/runs   # an existing cluster\n"
            "  metaconstraint sweep SPEC.yaml --only 'aspc-*-s2' 'td3bc*-s2' --dry-run    # part of a spec, in this order\n"
            "\n--set KEY=V1,V2 makes KEY an axis of the grid (values crossed with everything else); a list value goes\n"
            "in brackets (actor_hidden=[64,64],[32,32]). Ctrl-C or `kill PID` (SIGTERM, e.g. of a sweep in the\n"
            "background) stops it: the running runs write a checkpoint; the same command continues them.\n"
            "Exit status: 0 all runs finished, 1 some failed, 2 bad input, 130/143 interrupted (SIGINT/SIGTERM)."
        ),
    )
    a = s.add_argument
    a("spec", nargs="?", metavar="SPEC.yaml", help="sweep spec (YAML data: out, settings, grids); or use the flags below")
    a("--algo", nargs="+", metavar="ALGO", help="algorithms (an axis of the grid)")
    a("--dataset", nargs="+", metavar="ID_OR_PATH", help="datasets (an axis; default: pendulum-medium)")
    a("--seeds", metavar="0-2", help="seeds: a range 0-2, a list 0,3,7 (default: 0)")
    a("--set", action="append", nargs="+", default=[], metavar="KEY=V1,V2",
      help="a setting and its values (an axis of the grid); repeatable")
    a("--out", metavar="DIR", help="the results folder: run directories go to DIR/<variant>/ (required without a spec's out:)")
    a("--cpus-per-run", type=resources, default=1.0, metavar="N", help="CPUs Ray reserves per run (and torch threads)")
    a("--gpus-per-run", type=resources, default=0.0, metavar="N", help="GPUs Ray reserves per run (fractions allowed)")
    a("--max-parallel", type=positive_int, metavar="N", help="at most N runs at once (default: as many as the resources allow)")
    a("--address", metavar="HOST:PORT", help="join an existing Ray cluster (default: $RAY_ADDRESS when set, else a new "
                                              "local instance, even beside a `ray start` cluster; 'auto' joins one "
                                              "started with `ray start` on this machine)")
    a("--retries", type=nonneg_int, default=3, metavar="N", help="times Ray retries a run whose worker or process died")
    a("--plots", action="store_true", help="let every run draw its own plots (default: off; use `metaconstraint plot OUT`)")
    a("--only", nargs="+", metavar="PATTERN", help="run only the runs whose name matches one of these shell patterns "
                                                    "(e.g. 'aspc-*-s2' or 'td3bc/*'), in the order of the patterns")
    a("--dry-run", action="store_true", help="list the planned runs and their state; start nothing")
    s.set_defaults(func=cli_sweep)
