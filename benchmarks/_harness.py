"""Shared pieces of the benchmark suites: machine info, timers, peak memory, data, result files.

Timing rules used by every suite:

* CPU: ``time.perf_counter`` around the work. CUDA: ``torch.cuda.Event`` pairs after a
  ``torch.cuda.synchronize()``, read after the end event has completed, so queued kernels
  are counted and nothing from earlier work leaks in.
* Every measured function is run a few times first (warm-up: allocator, Adam state,
  lazy initialisation) and is never timed on its first call.
* Ratios come from *alternating* measurements in one process (A, B, B, A, A, B, ...), so a
  change of machine load affects both sides; we report medians.

Peak memory: on CUDA, ``torch.cuda.max_memory_allocated`` minus the allocation before the
call. On CPU, ``tracemalloc`` does not see PyTorch's tensor memory (the CPU allocator calls
``malloc`` directly, outside Python's allocator), so we use the resident-set high-water mark
(``VmHWM``, reset by writing ``5`` to ``/proc/self/clear_refs``) minus the resident set
before the call, measured in a *fresh probe process* started with glibc's mmap threshold at
64 KiB: then every tensor block is mmap'ed and unmapped on free and the high-water mark
follows live tensors, not a malloc cache. Not in the timing process: that setting doubles
the time of a batch-1024 update (a page fault per fresh page). Cross-checked against
``torch.profiler``'s memory timeline (agreement within ~0.2 MiB on the unrolled backends).
Linux only; elsewhere ``None``.
"""

from __future__ import annotations

import ctypes
import datetime as _dt
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from metaconstraint.batch import Batch

RESULTS_DIR = Path(__file__).resolve().parent / "results"
REPO_ROOT = Path(__file__).resolve().parents[1]

# obs/action sizes of HalfCheetah/Walker2d (the MuJoCo locomotion tasks of the paper).
OBS_DIM, ACT_DIM = 17, 6

# ----------------------------------------------------------------------------- sizes

SIZES: dict[str, dict[str, Any]] = {
    # rounds: alternating rounds (at least; the update suite adds rounds up to `updates` per
    # agent); min_block: fewest updates in one timed block of the update suite;
    # peer_block: updates per block of the peer suite.
    # seconds: checks that every code path runs (used while developing, a smoke run)
    "tiny": dict(widths=(16,), batches=(32,), rounds=2, updates=8, min_block=4, peer_block=4),
    # a few minutes: the small width of the issue, for quick comparisons
    "quick": dict(widths=(64,), batches=(256,), rounds=5, updates=120, min_block=10, peer_block=20),
    # the reported numbers: the paper's width 256, batch 256 and 1024
    "full": dict(widths=(256,), batches=(256, 1024), rounds=5, updates=160, min_block=10, peer_block=20),
}
K_ALPHAS = (1, 2, 5, 10, 30)
HORIZONS = (1, 5, 10)  # lookahead of alpha's hypergradient, timed at k_alpha = 10 (robust critic)


def budget(size: dict[str, Any], batch_size: int) -> tuple[int, int]:
    """``(updates, min_rounds)`` for one measurement: fewer for batches above 256 (runtime)."""
    scale = min(1.0, 256 / batch_size)
    return max(1, int(size["updates"] * scale)), max(min(3, size["rounds"]), round(size["rounds"] * scale**0.5))
CRITICS = ("robust", "plain")


# ----------------------------------------------------------------------------- machine


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def gpu_clocks() -> dict[str, str] | None:
    """Clocks, power and temperature as found (``nvidia-smi``), or None without one."""
    fields = "name,clocks.sm,clocks.mem,clocks.max.sm,clocks.max.mem,power.draw,power.limit,temperature.gpu,persistence_mode,driver_version"
    try:
        out = subprocess.run(
            ["nvidia-smi", f"--query-gpu={fields}", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0 or not out.stdout.strip():
        return None
    values = [v.strip() for v in out.stdout.strip().splitlines()[0].split(",")]
    return dict(zip(fields.split(","), values))


def machine_info(device: torch.device) -> dict[str, Any]:
    """Everything needed to read a timing later: CPU, cores, load, versions, GPU and its clocks."""
    info: dict[str, Any] = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "cpu_model": _cpu_model(),
        "logical_cores": os.cpu_count(),
        "cores_available": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_1_5_15": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": _version("numpy"),
        "higher": _version("higher"),
        "d3rlpy": _version("d3rlpy"),
        "metaconstraint": _version("metaconstraint"),
        "git_commit": _git_commit(),
        "device": str(device),
    }
    if device.type == "cuda":
        info["device_name"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
        info["cudnn"] = torch.backends.cudnn.version()
        info["tf32_matmul"] = torch.backends.cuda.matmul.allow_tf32
        info["gpu_clocks_as_found"] = gpu_clocks()
    else:
        info["device_name"] = info["cpu_model"]
    return info


# ----------------------------------------------------------------------------- timing


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], Any], device: torch.device) -> float:
    """Seconds one call of ``fn`` takes (CUDA events on a GPU, perf_counter on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


class Alternating:
    """Times several functions in alternation; one ``round()`` times each once.

    The order is reversed every other round (A B, B A, A B, ...) so that neither side is
    systematically first after a pause. ``times[name]`` collects seconds per call.
    """

    def __init__(self, fns: dict[str, Callable[[], Any]], device: torch.device):
        if not fns:
            raise ValueError("Alternating needs at least one function")
        self.fns = fns
        self.device = device
        self.times: dict[str, list[float]] = {k: [] for k in fns}
        self._rounds = 0

    def warmup(self, calls: int = 1) -> None:
        for _ in range(calls):
            for fn in self.fns.values():
                fn()
        sync(self.device)

    def round(self) -> None:
        names = list(self.fns)
        if self._rounds % 2:
            names.reverse()
        for name in names:
            self.times[name].append(time_call(self.fns[name], self.device))
        self._rounds += 1

    def median(self, name: str) -> float:
        return statistics.median(self.times[name])

    def paired_ratios(self, num: str, den: str) -> list[float]:
        return [a / b for a, b in zip(self.times[num], self.times[den])]


def spread(values: Sequence[float]) -> dict[str, float]:
    """Median, quartiles, min and max of a sample (quartiles by the 'inclusive' method)."""
    v = sorted(values)
    if len(v) >= 2:
        q1, _, q3 = statistics.quantiles(v, n=4, method="inclusive")
    else:
        q1 = q3 = v[0]
    return {"median": statistics.median(v), "q1": q1, "q3": q3, "min": v[0], "max": v[-1], "n": len(v)}


# ----------------------------------------------------------------------------- memory

# glibc settings of the CPU memory probe process (see module docstring): every block of
# 64 KiB or more is mmap'ed and unmapped on free, so the resident set follows live tensors.
PROBE_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "131072"}
CPU_MEMORY_METHOD = (
    "RSS high-water mark (VmHWM after a reset) - RSS before, in a fresh process with glibc "
    "mmap threshold 64 KiB"
)


def _proc_status(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def rss_peak(fn: Callable[[], Any]) -> int | None:
    """Resident-set growth at the peak of one call (run this in the probe process only)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current resident set
    except OSError:
        return None
    base = _proc_status("VmRSS")
    fn()
    peak = _proc_status("VmHWM")
    return None if base is None or peak is None else max(0, peak - base)


def cpu_peak_memory_probe(script: Path, args: list[str]) -> Any:
    """Run ``python script args`` as a fresh probe process; return the JSON of its last line.

    ``None`` off Linux (no ``/proc``) without running anything.
    """
    if not sys.platform.startswith("linux"):
        return None
    env = dict(os.environ, **PROBE_ENV, OMP_NUM_THREADS=str(torch.get_num_threads()))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(script.parent), env.get("PYTHONPATH", "")) if p)
    out = subprocess.run(
        [sys.executable, str(script), *args], env=env, capture_output=True, text=True, timeout=900, cwd=REPO_ROOT
    )
    if out.returncode != 0:
        raise RuntimeError(f"memory probe {script.name} {' '.join(args)} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def cuda_peak_memory(fn: Callable[[], Any], device: torch.device) -> int:
    """``torch.cuda.max_memory_allocated`` during one call, minus the allocation before it."""
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - base


CUDA_MEMORY_METHOD = "torch.cuda.max_memory_allocated - allocated before"


# ----------------------------------------------------------------------------- data


def random_batches(
    n: int,
    batch_size: int,
    device: torch.device,
    obs_dim: int = OBS_DIM,
    act_dim: int = ACT_DIM,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> list[Batch]:
    """``n`` batches of synthetic transitions on ``device`` (normalised obs, actions in [-1, 1]).

    Timing does not depend on the values, only on the shapes; terminals are ~1% ones.
    """
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        obs = torch.randn(batch_size, obs_dim, generator=g, dtype=dtype)
        out.append(
            Batch(
                observations=obs,
                actions=torch.rand(batch_size, act_dim, generator=g, dtype=dtype) * 2 - 1,
                rewards=torch.randn(batch_size, generator=g, dtype=dtype),
                next_observations=obs + 0.1 * torch.randn(batch_size, obs_dim, generator=g, dtype=dtype),
                terminals=(torch.rand(batch_size, generator=g) < 0.01).to(dtype),
                next_actions=torch.rand(batch_size, act_dim, generator=g, dtype=dtype) * 2 - 1,
                next_action_mask=torch.ones(batch_size, dtype=dtype),
            )
        )
    return [Batch(*(t.to(device) for t in b)) for b in out]


# ----------------------------------------------------------------------------- results


def result_path(suite: str, device: torch.device, size: str) -> Path:
    return RESULTS_DIR / f"{suite}-{device.type}-{size}.json"


def write_result(suite: str, device: torch.device, size: str, payload: dict[str, Any]) -> Path:
    """Write one suite's rows with the machine info to ``benchmarks/results/<suite>-<device>-<size>.json``."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = result_path(suite, device, size)
    doc = {"suite": suite, "size": size, "machine": machine_info(device), **payload}
    path.write_text(json.dumps(doc, indent=1, sort_keys=False) + "\n")
    return path
