#!/usr/bin/env python3
"""Tests bench/step_trace_summary.py (run from the repository root by ctest).

1. The committed H100 long-doc-qa traces of seed 6 agree with the worker
   counters their bench runs recorded: prompt tokens computed and steps
   exactly, busy and forward seconds within 0.1% (the trace rounds each step
   to 0.1 us).
2. A hand-made trace gives the hand-computed positions, attention pairs and
   waiting split.
3. A malformed trace exits 2 naming the file and line.
4. --outside: the split of the time outside the forward by step kind, waiting
   and rollover (hand-made trace) adds up to the trace's total.
"""
import json
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, "bench")
import step_trace_summary as summary  # noqa: E402

RESULTS = "docs/results/e2e_h100_engine"


def test_committed_traces_match_worker_counters():
    for system in ("vllm", "pensieve", "asymcache"):
        s = summary.summarize(summary.read_trace(
            f"{RESULTS}/traces/longdocqa-seed6-{system}-0.15.steps.jsonl.gz"))
        runs = json.load(open(f"{RESULTS}/longdocqa_seed6_{system}.json"))["runs"]
        worker = [r for r in runs if r["system"] == system][0]["worker"]
        assert s["tokens"] == worker["prefill_tokens"], (system, s["tokens"], worker["prefill_tokens"])
        assert s["steps"] == worker["steps"], system
        assert abs(s["busy_s"] - worker["step_seconds"]) <= 1e-3 * worker["step_seconds"], system
        assert abs(s["forward_s"] - worker["forward_seconds"]) <= 1e-3 * worker["forward_seconds"], system


def test_hand_made_trace():
    lines = [{"schema": "asymcache.step_trace.v1"},
             {"t_ms": 0, "decodes": [], "chunks": [[1, 0, 4]], "predicted_ms": 5, "forward_ms": 4,
              "step_ms": 5, "waiting": 2},
             {"t_ms": 5, "decodes": [[1, 4]], "chunks": [[2, 10, 12]], "predicted_ms": 3, "forward_ms": 2,
              "step_ms": 3, "waiting": 0},
             {"t_ms": 8, "decodes": [[1, 5], [2, 12]], "chunks": [], "predicted_ms": 1, "forward_ms": 1,
              "step_ms": 2, "waiting": 0}]
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as f:
        f.write("\n".join(json.dumps(x) for x in lines) + "\n")
    try:
        s = summary.summarize(summary.read_trace(f.name))
    finally:
        os.unlink(f.name)
    assert s["steps"] == 3 and s["tokens"] == 6
    # positions 0..3 and 10, 11: sum 6 + 21 = 27.
    assert abs(s["position_sum"] - 27) < 1e-9, s["position_sum"]
    # pairs: (16 - 0) / 2 + (144 - 100) / 2 = 8 + 22.
    assert abs(s["pairs"] - 30) < 1e-9, s["pairs"]
    assert (s["wait_steps"], s["wait_tokens"], s["free_steps"], s["free_tokens"]) == (1, 4, 1, 2)
    assert (s["decode_steps"], s["decode_s"]) == (1, 0.002)
    assert abs(s["busy_s"] - 0.010) < 1e-12 and abs(s["forward_s"] - 0.007) < 1e-12


def test_outside_split():
    rows = [{"decodes": [17], "chunks": [], "step_ms": 3.0, "forward_ms": 1.0, "waiting": 0},
            {"decodes": [18], "chunks": [], "step_ms": 1.5, "forward_ms": 1.0, "waiting": 1},
            {"decodes": [33, 40], "chunks": [[1, 0, 8]], "step_ms": 9.0, "forward_ms": 5.0,
             "waiting": 2},
            {"decodes": [], "chunks": [[1, 8, 16]], "step_ms": 4.0, "forward_ms": 4.0, "waiting": 0}]
    split = summary.outside_split(rows)
    assert split == {("decode", False, True): [1, 0.002], ("decode", True, False): [1, 0.0005],
                     ("mixed", True, True): [1, 0.004], ("prefill", False, False): [1, 0.0]}, split
    total = sum(sec for _, sec in split.values())
    assert abs(total - sum(r["step_ms"] - r["forward_ms"] for r in rows) / 1e3) < 1e-12


def test_malformed_trace_is_refused():
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as f:
        f.write(json.dumps({"schema": "asymcache.step_trace.v1"}) + "\n{not json\n")
    try:
        res = subprocess.run([sys.executable, "bench/step_trace_summary.py", f.name],
                             capture_output=True, text=True)
    finally:
        os.unlink(f.name)
    assert res.returncode == 2, res
    assert f"{f.name}:2: not JSON" in res.stderr, res.stderr


if __name__ == "__main__":
    test_committed_traces_match_worker_counters()
    test_hand_made_trace()
    test_outside_split()
    test_malformed_trace_is_refused()
    print("step_trace_summary_test: ok")
