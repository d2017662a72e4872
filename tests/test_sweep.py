"""`metaconstraint sweep`: the grid, the spec file, the missing extra, and a real local Ray run
(idempotent, and a worker killed with SIGKILL is retried and resumes to the same final metrics)."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from metaconstraint.plotting import flat_settings
from metaconstraint.sweep import SpecError, grid_from_flags, load_spec, plan, run_state, select
from tests.test_training import write_tiny_npz

ROOT = Path(__file__).resolve().parent.parent
TINY = ["actor_hidden=[16,16]", "critic_width=16", "batch_size=64", "log_every=50", "checkpoint_every=50",
        "eval_every=0", "eval_episodes=2"]


@pytest.fixture(scope="module")
def tiny_npz(tmp_path_factory) -> Path:
    return write_tiny_npz(tmp_path_factory.mktemp("data") / "pendulum_tiny.npz")


def sweep_cli(*args: object, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    return subprocess.run([sys.executable, "-m", "metaconstraint", "sweep", *map(str, args)], capture_output=True,
                          text=True, cwd=ROOT, env=env, timeout=kw.pop("timeout", 300), **kw)


# -- the grid --------------------------------------------------------------------------------------------


def test_flags_make_a_seed_major_grid_with_one_directory_per_run(tmp_path):
    runs = plan(grid_from_flags(["aspc", "td3bc"], ["pendulum-medium"], "0-2", ["alpha=2.5,3.0", "steps=500"],
                                str(tmp_path)))
    assert len(runs) == 2 * 3 * 2
    assert [r.config["seed"] for r in runs] == [0] * 4 + [1] * 4 + [2] * 4  # a sweep cut short has whole seeds
    assert runs[0].name == "aspc-alpha=2.5/aspc-alpha=2.5-pendulum-medium-s0"
    assert runs[0].run_dir == tmp_path / runs[0].name
    assert {(r.config["algo"], r.config["agent"]["alpha"]) for r in runs} == {
        ("aspc", 2.5), ("aspc", 3.0), ("td3bc", 2.5), ("td3bc", 3.0)}
    assert all(r.config["steps"] == 500 and r.config["agent"]["planned_steps"] == 500 for r in runs)
    assert len({r.run_dir for r in runs}) == len(runs)


@pytest.mark.parametrize("spec, message", [
    ({"grids": [{}], "jobs": 3}, r"unknown key\(s\) in the sweep spec: jobs"),
    ({"grids": [{"seed": "0-x"}]}, r"expected seeds like 0-2"),
    ({"grids": [{"alpah": [1.0]}]}, r"unknown setting 'alpah'.*did you mean alpha"),
    ({"grids": [{"algo": ["td3bc"], "constraint.lr": [0.1]}]}, r"grids\[1\] \(td3bc, dataset pendulum-medium, seed 0\)"),
    ({"grids": [{"configs": [{"name": "a"}, {"name": "a"}]}]}, r"would share the run directory"),
    ({"grids": [{"steps": -5}]}, r"steps must be a positive number"),
    ({"grids": "aspc"}, r"needs grids: a list of mappings"),
    ({"grids": [{"dataset": []}]}, r"grids\[1\].dataset is an empty list"),
])
def test_a_bad_spec_stops_before_anything_runs_with_a_message(tmp_path, spec, message):
    with pytest.raises(SpecError, match=message):
        plan({"out": str(tmp_path / "out"), **spec})
    assert not (tmp_path / "out").exists()


def test_a_spec_is_data_only(tmp_path):
    target = tmp_path / "pwned"
    spec = tmp_path / "evil.yaml"
    spec.write_text(f'out: x\ngrids: !!python/object/apply:os.system ["touch {target}"]\n')
    with pytest.raises(SpecError, match="not plain YAML data"):
        load_spec(spec)
    assert not target.exists()
    proc = sweep_cli(spec, "--dry-run")
    assert proc.returncode == 2 and proc.stderr.startswith("error: sweep spec") and not target.exists()


def test_set_values_split_on_commas_and_keep_bracketed_lists(tmp_path):
    runs = plan(grid_from_flags(["aspc"], None, None, ["actor_hidden=[32,32],[64,64]", "critic=robust,plain"],
                                str(tmp_path)))
    assert sorted((tuple(r.config["agent"]["actor_hidden"]), r.config["agent"]["critic"]) for r in runs) == [
        ((32, 32), "plain"), ((32, 32), "robust"), ((64, 64), "plain"), ((64, 64), "robust")]
    with pytest.raises(SpecError, match="given twice"):
        grid_from_flags(["aspc"], None, None, ["steps=1", "steps=2"], "x")


def test_the_experiments_spec_regenerates_the_committed_suite():
    """Every committed run of the evidence suite (except the d3rlpy peer, which is not a `train` run) is a
    run of experiments/suite.yaml, in the same directory and with the same settings."""
    results = ROOT / "experiments" / "results"
    runs = {r.name: r for r in plan(load_spec(ROOT / "experiments" / "suite.yaml"), "experiments/results")}
    committed = {p.parent.relative_to(results).as_posix(): p for p in results.glob("*/*/config.yaml")
                 if not p.parent.parent.name.startswith("d3rlpy")}
    assert len(committed) == 176 and set(runs) == set(committed)
    for name, path in committed.items():  # written before issue 18: the constraint block by its old names
        have, want = flat_settings(yaml.safe_load(path.read_text())), flat_settings(runs[name].config)
        assert have == {k: want[k] for k in have}, name


def test_without_ray_the_sweep_stops_with_one_line_naming_the_extra(tmp_path, tiny_npz):
    code = ("import sys; sys.modules['ray'] = None\n"  # import ray -> ImportError, as without the extra
            "from metaconstraint.cli import main\n"
            f"sys.exit(main(['sweep', '--algo', 'aspc', '--dataset', {str(tiny_npz)!r}, '--out', {str(tmp_path / 'o')!r}]))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "pip install 'metaconstraint[sweep]'" in proc.stderr
    assert not (tmp_path / "o").exists()


# -- on a local Ray instance --------------------------------------------------------------------------------


def _train_processes(run_dir: Path) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            args = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        text = [a.decode(errors="replace") for a in args]
        if "train" in text and any(str(run_dir) == a for a in text):
            pids.append(int(proc.name))
    return pids


def _parent(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(ln.split()[1] for ln in status.splitlines() if ln.startswith("PPid:")))


def _rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return [{k: v for k, v in row.items() if k not in ("wall_s", "steps_per_s")} for row in csv.DictReader(f)]


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the worker through /proc")
def test_sweep_on_local_ray_survives_a_killed_worker_and_is_idempotent(tmp_path, tiny_npz):
    pytest.importorskip("ray")
    out = tmp_path / "sweep"
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({
        "out": str(out),
        "settings": {"dataset": str(tiny_npz), "steps": 400, **dict(s.split("=") for s in TINY)},
        "grids": [{"configs": [{"name": "aspc", "algo": "aspc", "constraint.every": 2}, {"name": "td3bc", "algo": "td3bc"}]},
                  {"configs": [{"name": "broken", "algo": "td3bc", "dataset": str(tmp_path / "missing.npz")}]}],
    }))
    target = out / "aspc" / "aspc-pendulum-tiny-s0"
    t0 = time.time()
    log = open(tmp_path / "sweep.out", "w+")
    sweep = subprocess.Popen([sys.executable, "-m", "metaconstraint", "sweep", str(spec), "--retries", "2"],
                             stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                             env={**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"})
    try:
        # SIGKILL the Ray worker running the ASPC run once that run has written a checkpoint
        while not list((target / "checkpoints").glob("step_*.pt")):
            assert sweep.poll() is None and time.time() - t0 < 240, "no checkpoint appeared"
            time.sleep(0.02)
        (child,) = _train_processes(target)
        worker = _parent(child)
        assert Path(f"/proc/{worker}/cmdline").read_bytes().startswith(b"ray::")  # a Ray worker, not the driver
        os.kill(worker, signal.SIGKILL)
        code = sweep.wait(timeout=300)
    finally:
        if sweep.poll() is None:
            sweep.kill()
    wall = time.time() - t0
    log.seek(0)
    output = log.read()
    assert code == 1, output  # one run failed (its dataset is missing), the others finished
    assert "FAILED broken/broken-missing-s0: exit status 2: error:" in output and "missing.npz" in output
    assert "finished aspc/aspc-pendulum-tiny-s0:" in output and "resumed from step" in output
    assert "finished td3bc/td3bc-pendulum-tiny-s0:" in output
    assert "| dataset | aspc [constraint.every=2] | td3bc |" in output  # the sweep's report table
    assert not _train_processes(target)  # the killed worker's train process died with it
    assert run_state(target) == "finished"

    # the resumed run ends exactly where an uninterrupted run with the same settings does
    ref = tmp_path / "reference"
    proc = subprocess.run([sys.executable, "-m", "metaconstraint", "train", "--config", str(target / "config.yaml"),
                           "--run-dir", str(ref), "--quiet", "--no-plots", "--threads", "1"],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    got, want = (json.loads((d / "summary.json").read_text()) for d in (target, ref))
    for key in ("step", "final_score", "final_return", "coef_end", "coef_min", "coef_max"):
        assert got[key] == want[key], key
    assert _rows(target) == _rows(ref) and len(_rows(ref)) == 400 // 50

    # idempotent: the same sweep again skips the finished runs and leaves their files alone
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.suffix != ".md"}
    t1 = time.time()
    again = sweep_cli(spec, "--retries", "2")
    assert again.returncode == 1  # the broken run is still broken: it is tried again and fails again
    assert "2 finished already (skipped), 0 to resume, 1 to start" in again.stdout
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items() if "broken" not in str(p))
    print(f"\nRay sweep with a killed worker: {wall:.1f} s; repeat: {time.time() - t1:.1f} s")

    # --only: part of the sweep (here the finished TD3+BC run: skipped, exit 0 without the broken run), while the
    # report still covers every run of the sweep
    part = sweep_cli(spec, "--only", "td3bc*")
    assert part.returncode == 0, part.stdout + part.stderr
    assert "1 finished already (skipped), 0 to resume, 0 to start" in part.stdout
    assert "| dataset | aspc [constraint.every=2] | td3bc |" in part.stdout
    assert "sweep done: 1 of 1 runs finished" in part.stdout


def test_a_run_directory_with_other_settings_stops_the_sweep_before_anything_runs(tmp_path):
    from metaconstraint.sweep import run_sweep

    runs = plan(grid_from_flags(["aspc"], None, "0", ["constraint.lr=0.25"], str(tmp_path)))
    agent = runs[0].config["agent"]
    other = dict(runs[0].config, agent={**agent, "constraint": {**agent["constraint"], "lr": 0.5}})
    runs[0].run_dir.mkdir(parents=True)
    (runs[0].run_dir / "config.yaml").write_text(yaml.safe_dump(other))
    with pytest.raises(SpecError, match=r"aspc-pendulum-medium-s0 \(agent.constraint.lr: 0.5 there, 0.25 in the sweep\) "
                                        r"already holds a run with other settings"):
        run_sweep(runs)
    assert sorted(p.name for p in runs[0].run_dir.iterdir()) == ["config.yaml"]


def test_dry_run_lists_the_runs_and_their_state(tmp_path, tiny_npz):
    proc = sweep_cli("--algo", "aspc", "td3bc", "--dataset", tiny_npz, "--seeds", "0-1", "--set", "critic=robust,plain",
                     "--out", tmp_path / "o", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[-1] == "8 runs planned (dry run: nothing started)"
    assert lines[0].split() == ["new", str(tmp_path / "o" / "aspc-critic=robust" / "aspc-critic=robust-pendulum-tiny-s0")]
    assert not (tmp_path / "o").exists()


def test_only_picks_runs_by_pattern_in_the_order_of_the_patterns(tmp_path):
    runs = plan(grid_from_flags(["aspc", "td3bc"], ["pendulum-medium"], "0-2", [], str(tmp_path)))
    labels = lambda rs: [r.label for r in rs]  # noqa: E731
    assert labels(select(runs, ["*-s2", "aspc-*"])) == [  # s2 first, then the aspc runs not chosen yet
        "aspc-pendulum-medium-s2", "td3bc-pendulum-medium-s2", "aspc-pendulum-medium-s0", "aspc-pendulum-medium-s1"]
    assert labels(select(runs, ["td3bc/*-s1"])) == ["td3bc-pendulum-medium-s1"]  # with '/': the variant's folder too
    with pytest.raises(SpecError, match=r"--only 'apsc-\*' matches none of the sweep's 6 runs .*--dry-run"):
        select(runs, ["aspc-*", "apsc-*"])


def test_dry_run_with_only_lists_the_chosen_runs(tmp_path, tiny_npz):
    proc = sweep_cli("--algo", "aspc", "td3bc", "--dataset", tiny_npz, "--seeds", "0-1", "--out", tmp_path / "o",
                     "--only", "*-s1", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert [ln.split()[1].rsplit("/", 1)[1] for ln in lines[:-1]] == ["aspc-pendulum-tiny-s1", "td3bc-pendulum-tiny-s1"]
    assert lines[-1] == "2 runs planned (--only: 2 of the sweep's 4) (dry run: nothing started)"
    bad = sweep_cli("--algo", "aspc", "--dataset", tiny_npz, "--out", tmp_path / "o", "--only", "*-s9", "--dry-run")
    assert bad.returncode == 2 and "--only '*-s9' matches none of the sweep's 1 runs" in bad.stderr


def _stop_sweep_at_first_checkpoint(tmp_path: Path, args: list, how: str) -> tuple[int, str, Path]:
    """Start a sweep of one run, stop it the given way once the run has a checkpoint; (exit status, output, run)."""
    run_dir = tmp_path / "sweep" / "aspc" / "aspc-pendulum-tiny-s0"
    log = open(tmp_path / "sweep.out", "w+")
    # a background job of a shell script has SIGINT ignored (and pytest started in the background passes that on);
    # a terminal's foreground job has the default
    sigint = signal.SIG_IGN if how == "SIGINT, in the background" else signal.SIG_DFL
    sweep = subprocess.Popen([sys.executable, "-m", "metaconstraint", "sweep", *map(str, args)], stdout=log,
                             stderr=subprocess.STDOUT, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"},
                             preexec_fn=lambda: signal.signal(signal.SIGINT, sigint))
    t0 = time.time()
    try:
        while not list((run_dir / "checkpoints").glob("step_*.pt")):
            assert sweep.poll() is None and time.time() - t0 < 240, "no checkpoint appeared"
            time.sleep(0.02)
        if how == "SIGINT to its train process":  # e.g. a user stopping one run of a sweep
            (child,) = _train_processes(run_dir)
            os.kill(child, signal.SIGINT)
        else:
            sweep.send_signal(signal.SIGTERM if how == "SIGTERM" else signal.SIGINT)
        code = sweep.wait(timeout=120)
    finally:
        if sweep.poll() is None:
            sweep.kill()
    log.seek(0)
    return code, log.read(), run_dir


@pytest.mark.slow
@pytest.mark.parametrize("how, code", [("SIGINT", 130), ("SIGINT, in the background", 130), ("SIGTERM", 143),
                                       ("SIGINT to its train process", 130)])
def test_a_stopped_sweep_leaves_checkpoints_and_the_same_sweep_continues_them(tmp_path, tiny_npz, how, code):
    pytest.importorskip("ray")
    args = ["--algo", "aspc", "--dataset", tiny_npz, "--set", "steps=2000", "checkpoint_every=250",
            *[s for s in TINY if not s.startswith("checkpoint_every")], "--out", tmp_path / "sweep"]
    got, output, run_dir = _stop_sweep_at_first_checkpoint(tmp_path, args, how)
    assert got == code and "run the same command again to continue them" in output, output
    assert "FAILED" not in output and not (tmp_path / "sweep" / "report.md").exists()  # no report of a half sweep
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "interrupted" and 250 <= summary["step"] < 2000  # train's own SIGINT handling
    assert (run_dir / "checkpoints" / f"step_{summary['step']:08d}.pt").is_file()
    assert not _train_processes(run_dir)
    if how != "SIGINT":  # continuing is the same whichever way it stopped: once is enough
        return
    again = sweep_cli(*args)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "0 finished already (skipped), 1 to resume, 0 to start" in again.stdout
    assert f"resumed from step {summary['step']}" in again.stdout and run_state(run_dir) == "finished"


@pytest.mark.parametrize("code, status, want", [(0, "finished", "finished"), (130, "interrupted", "interrupted"),
                                                (143, "interrupted", "interrupted"), (0, "interrupted", "failed"),
                                                (2, "interrupted", "failed"), (130, "finished", "failed"),
                                                (1, None, "failed"), (3, "diverged", "failed")])
def test_a_runs_outcome_needs_its_exit_status_and_its_summary_to_agree(code, status, want):
    """A summary left by an earlier stop says 'interrupted' even when the resumed train then fails (exit 2):
    only 130/143 with an 'interrupted' summary is a stop the sweep can continue."""
    from metaconstraint.sweep import outcome

    assert outcome(code, {} if status is None else {"status": status}) == want


@pytest.mark.parametrize("given, env, expected", [(None, None, "local"), (None, "ray-head:6379", "ray-head:6379"),
                                                  ("auto", "ray-head:6379", "auto")])
def test_the_default_is_a_new_local_ray_even_beside_a_ray_start_cluster(tmp_path, monkeypatch, given, env, expected):
    """ray.init() without an address joins a `ray start` cluster on the machine (and then refuses the sweep's
    object-store size): the sweep asks for its own local instance, unless --address or RAY_ADDRESS says where."""
    from metaconstraint import sweep

    class Stop(Exception):
        pass

    seen = {}

    class FakeRay:
        @staticmethod
        def is_initialized():
            return False

        @staticmethod
        def init(**kw):
            seen.update(kw)
            raise Stop

    monkeypatch.setattr(sweep, "_import_ray", lambda: FakeRay)
    if env is None:
        monkeypatch.delenv("RAY_ADDRESS", raising=False)
    else:
        monkeypatch.setenv("RAY_ADDRESS", env)
    runs = plan({"out": str(tmp_path / "out"), "grids": [{"algo": "td3bc", "dataset": "pendulum-medium"}]})
    with pytest.raises(Stop):
        sweep.run_sweep(runs, address=given, echo=lambda _: None)
    assert seen["address"] == expected
    assert ("object_store_memory" in seen) == (expected == "local")


def test_a_spec_pins_each_dataset_to_its_build_and_old_runs_without_the_pin_still_match(tmp_path):
    from metaconstraint.sweep import _check_existing

    spec = {"out": str(tmp_path), "settings": {"steps": 500, "dataset_sha256": {"pendulum-medium": "d8f6dbfafb525fed"}},
            "grids": [{"dataset": ["pendulum-medium", "pendulum-expert"], "seed": [0]}]}
    runs = {r.config["dataset"]: r for r in plan(spec)}
    assert runs["pendulum-medium"].config["dataset_sha256"] == "d8f6dbfafb525fed"
    assert runs["pendulum-expert"].config["dataset_sha256"] is None  # a dataset not named is not checked
    old = runs["pendulum-medium"]  # a run made before the pin existed: the same settings, no dataset_sha256
    old.run_dir.mkdir(parents=True)
    (old.run_dir / "config.yaml").write_text(yaml.safe_dump({**old.config, "dataset_sha256": None}))
    _check_existing(list(runs.values()))  # the pin checks the data; it is not a setting that makes another run
