"""Options and fixtures of the benchmark suites (not part of the test run: see README.md).

Options (or the environment variable in brackets):

* ``--bench-size tiny|quick|full`` [``BENCH_SIZE``, default ``quick``]: widths, batch sizes
  and rounds (see ``_harness.SIZES``).
* ``--bench-device auto|cpu|cuda`` [``BENCH_DEVICE``, default ``auto``: CUDA when available].
* ``--bench-threads N`` [``BENCH_THREADS``, default 1]: ``torch.set_num_threads`` for CPU runs.
* ``--bench-no-write``: do not write ``benchmarks/results/*.json`` nor the table and plot.

Each suite adds rows to a session recorder; at the end every suite that ran writes
``benchmarks/results/<suite>-<device>-<size>.json`` and ``make_table.py`` rebuilds
``benchmarks/results/TABLE.md`` and the ratio plot from all result files.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _harness as H  # noqa: E402


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("metaconstraint benchmarks")
    group.addoption("--bench-size", default=os.environ.get("BENCH_SIZE", "quick"), choices=sorted(H.SIZES))
    group.addoption("--bench-device", default=os.environ.get("BENCH_DEVICE", "auto"), choices=["auto", "cpu", "cuda"])
    group.addoption("--bench-threads", type=int, default=int(os.environ.get("BENCH_THREADS", "1")))
    group.addoption("--bench-no-write", action="store_true", default=False)


class Recorder:
    """Rows of every suite in this session, written once at the end."""

    def __init__(self, size: str, device: torch.device, threads: int):
        self.size, self.device, self.threads = size, device, threads
        self.rows: dict[str, list[dict[str, Any]]] = {}
        self.lines: list[str] = []  # one readable line per measurement, printed at the end
        self.settings: dict[str, dict[str, Any]] = {}
        self.load_at_start = list(os.getloadavg()) if hasattr(os, "getloadavg") else None

    def add(self, suite: str, row: dict[str, Any], summary: str, **settings: Any) -> None:
        self.rows.setdefault(suite, []).append(row)
        self.settings.setdefault(suite, {}).update(settings)
        self.lines.append(f"{suite}: {summary}")

    def write(self) -> list[Path]:
        paths = []
        for suite, rows in self.rows.items():
            payload = {
                "load_average_at_start": self.load_at_start,
                "threads": self.threads,
                "settings": self.settings.get(suite, {}),
                "rows": rows,
            }
            paths.append(H.write_result(suite, self.device, self.size, payload))
        return paths


def _device(config: pytest.Config) -> torch.device:
    choice = config.getoption("--bench-device")
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if choice == "cuda" and not torch.cuda.is_available():
        raise pytest.UsageError("--bench-device cuda was asked for, but torch.cuda.is_available() is False")
    return torch.device(choice)


def pytest_configure(config: pytest.Config) -> None:
    if not hasattr(config.option, "bench_size"):
        return
    threads = config.getoption("--bench-threads")
    if threads < 1:
        raise pytest.UsageError(f"--bench-threads must be >= 1, got {threads}")
    torch.set_num_threads(threads)
    device = _device(config)
    config._bench_recorder = Recorder(config.getoption("--bench-size"), device, threads)  # type: ignore[attr-defined]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    rec: Recorder | None = getattr(session.config, "_bench_recorder", None)
    if rec is None or not rec.rows:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line("")
        reporter.write_sep("-", "benchmark summary")
        for line in rec.lines:
            reporter.write_line(line)
    if session.config.getoption("--bench-no-write"):
        return
    paths = rec.write()
    import make_table

    outputs = make_table.build(H.RESULTS_DIR)
    if reporter is not None:
        for p in [*paths, *outputs]:
            reporter.write_line(f"benchmark output: {p}")


def pytest_report_header(config: pytest.Config) -> list[str]:
    rec: Recorder | None = getattr(config, "_bench_recorder", None)
    if rec is None:
        return []
    load = ", ".join(f"{x:.2f}" for x in rec.load_at_start) if rec.load_at_start else "n/a"
    return [
        f"benchmarks: size={rec.size} device={rec.device} torch={torch.__version__} "
        f"threads={rec.threads} load average={load}"
    ]


@pytest.fixture(scope="session")
def recorder(request: pytest.FixtureRequest) -> Recorder:
    return request.config._bench_recorder  # type: ignore[attr-defined]


@pytest.fixture(scope="session")
def device(recorder: Recorder) -> torch.device:
    return recorder.device


@pytest.fixture(scope="session")
def size(recorder: Recorder) -> dict[str, Any]:
    return dict(H.SIZES[recorder.size], name=recorder.size)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrise ``width``, ``batch_size`` and ``hg_batch_size`` from the chosen size."""
    size = H.SIZES[metafunc.config.getoption("--bench-size")]
    if "width" in metafunc.fixturenames:
        metafunc.parametrize("width", size["widths"], ids=[f"w{w}" for w in size["widths"]])
    if "batch_size" in metafunc.fixturenames:
        metafunc.parametrize("batch_size", size["batches"], ids=[f"b{b}" for b in size["batches"]])
    if "hg_batch_size" in metafunc.fixturenames:  # the hypergradient suite: the first batch size only
        metafunc.parametrize("hg_batch_size", size["batches"][:1], ids=[f"b{b}" for b in size["batches"][:1]])
