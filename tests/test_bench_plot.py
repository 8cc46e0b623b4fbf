"""The speed-up plot of the side-by-side results (benchmarks/plot.py)."""

import json
import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
import plot as bench_plot


def _side(median, failure=None):
    return {"median_s": median, "times_s": [], "failure": failure}


RESULTS = [
    {"row": "sft", "sides": {"ours": _side(0.5), "trl": _side(1.0), "tunix": _side(0.4)}},
    {"row": "reward", "sides": {"ours": _side(2.0), "tunix": _side(None, "no trainer")}},
    {"row": "ppo", "sides": {"ours": _side(3.0), "trl112": _side(9.0)}},
]


def test_ratios_are_their_time_over_ours_and_missing_rows_say_why():
    bars, missing = bench_plot.ratios(RESULTS)
    assert bars == [("sft", "TRL", 2.0), ("sft", "Tunix", 0.8), ("ppo", "TRL", 3.0)]
    assert missing == ["reward/Tunix: no trainer"]


def test_a_row_without_our_time_is_an_error_naming_it():
    bad = [{"row": "dpo", "sides": {"ours": _side(None, "crashed"), "trl": _side(1.0)}}]
    with pytest.raises(ValueError, match=r"'dpo'.*crashed"):
        bench_plot.ratios(bad)


def test_plot_writes_a_png(tmp_path):
    meta = {"date": "2026-12-01", "cores": 2, "cpu": "CPU", "gpu": None, "torch_threads": 1}
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"meta": meta, "results": RESULTS}))
    out = tmp_path / "r.png"
    bench_plot.plot([str(path)], str(out))
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
