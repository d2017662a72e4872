"""benchmarks/make_table.py renders bench_capture.py's results (what gpu.sh writes as results/capture-cuda.json)
beside the suites' files, instead of refusing them."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def make_table():
    spec = importlib.util.spec_from_file_location("make_table", ROOT / "benchmarks" / "make_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_capture_results_get_their_own_table(tmp_path):
    doc = {"load_before": [1.0, 1.0, 1.0], "device": "NVIDIA H200", "torch": "2.13.0", "width": 256, "batch": 256,
           "td3bc": {"compile_s": 60.0, "graphs": 2, "graph_breaks": 0, "eager_updates_per_s": 500.0,
                     "captured_updates_per_s": 2500.0, "speedup": 5.0, "max_actor_param_diff": 3e-7},
           "td3bc-seeds8": {"eager_updates_per_s": 200.0, "captured_updates_per_s": 1500.0, "seed_updates_per_s": 12000.0,
                            "compile_s": 70.0, "vs_one_seed_captured": 1.667},
           "load_after": [1.0, 1.0, 1.0]}
    (tmp_path / "capture-cuda.json").write_text(json.dumps(doc))
    paths = make_table().build(tmp_path)
    text = paths[0].read_text()
    assert "| td3bc, one seed | 500.0 | 2500.0 | 5.00× | 60.0 | 2 | 3.0e-07 |" in text
    assert "| td3bc, 8 vmapped seeds (12000.0 seed-updates/s; 1.67× the time of one seed) | 200.0 | 1500.0 | 7.50× |" in text
