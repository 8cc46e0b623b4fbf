"""benchmarks/memory.py reads what it claims from XLA's compiled programs: program size that does
not grow with depth, temporaries that grow with it, and the largest vocabulary-sized array —
one log-prob chunk when the LM head runs in chunks."""

import json
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _report(tmp_path, *args) -> list[dict]:
    out = tmp_path / "memory.json"
    env = dict(os.environ, RLHF_BENCH_PROFILE="qwen2-smoke")
    subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "memory.py"), "--profiles", "qwen2-smoke",
         "--json", str(out), *args],
        check=True, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    rows = json.loads(out.read_text())["rows"]
    assert all("error" not in row for row in rows), rows
    return rows


def test_memory_report_sees_depth_and_the_logprob_chunks(tmp_path):
    rows = _report(tmp_path, "--steps", "trunk,sft", "--layers", "2,6", "--set", "logprob_chunk=16")
    by = {(row["step"], row["layers"]): row for row in rows}
    shallow, deep = by["trunk", 2], by["trunk", 6]
    assert deep["hlo_lines"] < 1.5 * shallow["hlo_lines"], (shallow, deep)
    assert deep["temp_bytes"] > shallow["temp_bytes"] > 0
    assert deep["argument_bytes"] > shallow["argument_bytes"]  # four more layers of weights
    # qwen2-smoke's SFT batch is 4 rows × 32 response positions, vocabulary 4096: in chunks of
    # 16 rows, no array holds more than one chunk of logits.
    for layers in (2, 6):
        largest = by["sft", layers]["largest_vocab_array"]
        assert largest["shape"] is not None and largest["shape"][-1] == 4096, largest
        assert largest["elements"] <= 16 * 4096, largest
