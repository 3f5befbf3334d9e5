#!/usr/bin/env python3
"""Tests bench/duplicate_prefill.py (run from the repository root by ctest).

1. A hand-made workload (two sessions on one 64-token document, a third on another) and trace:
   the second reader, starting while the first still computes the document, computes all 64
   document positions again (64 duplicate tokens; its question tokens past the document count
   none); a reader that starts after both ended counts none; requests are matched to their workload steps by length.
2. The committed seed-1 H200 traces give the duplicate counts docs/results/e2e_h200_defer.md
   quotes (asymcache run 1: 68608, vllm run 1: 102464, pensieve run 1 and the deferral runs: 0).
3. A malformed workload line exits 2 naming the file and line.
"""
import json
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, "bench")
import duplicate_prefill as dp  # noqa: E402
import step_trace_summary  # noqa: E402

failures = []
tmp = tempfile.mkdtemp()
workload = os.path.join(tmp, "w.jsonl")
steps = [
    {"session": "a", "step": 0, "input": [{"shared": "doc", "len": 64}, {"len": 4}], "output_len": 2},
    {"session": "b", "step": 0, "input": [{"shared": "doc", "len": 64}, {"len": 5}], "output_len": 2},
    {"session": "c", "step": 0, "input": [{"shared": "doc", "len": 64}, {"len": 6}], "output_len": 2},
    {"session": "a", "step": 1, "input": [{"len": 3}], "output_len": 2},
]
with open(workload, "w") as f:
    for s in steps:
        f.write(json.dumps(s) + "\n")
header = {"schema": "asymcache.step_trace.v1"}
rows = [  # request ids: 1 = a/0 (68), 2 = b/0 (69), 3 = c/0 (70), 4 = a/1 (68 + 2 + 3 = 73)
    {"t_ms": 0, "chunks": [[1, 0, 32]]},
    {"t_ms": 10, "chunks": [[1, 32, 68], [2, 0, 48]]},
    {"t_ms": 20, "chunks": [[2, 48, 69]]},
    {"t_ms": 30, "chunks": [[3, 60, 70]]},
    {"t_ms": 40, "chunks": [[4, 70, 73]]},
]
trace = os.path.join(tmp, "t.steps.jsonl")
with open(trace, "w") as f:
    f.write(json.dumps(header) + "\n")
    for r in rows:
        r.update({"decodes": [], "step_ms": 1, "forward_ms": 1, "predicted_ms": 1, "waiting": 0})
        f.write(json.dumps(r) + "\n")
reqs = dp.requests(step_trace_summary.read_trace(trace), dp.read_workload(workload))
want_steps = {1: ("a", 0), 2: ("b", 0), 3: ("c", 0), 4: ("a", 1)}
for rid, (session, step) in want_steps.items():
    got = reqs[rid]["step"]
    if got is None or got[:2] != (session, step):
        failures.append(f"request {rid} matched to {got}, want {session} step {step}")
# b starts at 10 ms, when a's last chunk runs: its 0-48 and 48-64 repeat a's 0-32 and 32-64;
# c starts after both ended; a's second turn computes no document positions.
got = dp.duplicate_tokens(reqs)
if got != 64:
    failures.append(f"hand-made trace: {got} duplicate tokens, want 64")

# 2. The committed traces.
base = "docs/results/e2e_h200_defer/traces"
seed1 = os.path.join(tmp, "s1.jsonl")
sim = "build/main/sim/asymcache-sim"
if os.path.exists(sim):
    subprocess.run([sim, "--workload=long-doc-qa", "--requests=24", "--seed=1", "--rate=0.15",
                    f"--dump_trace={seed1}"], check=True, capture_output=True)
    w = dp.read_workload(seed1)
    for run, want in (("s1_asymcache_1", 68608), ("s1_vllm_1", 102464), ("s1_pensieve_1", 0),
                      ("s1_asymcache_d1", 0), ("s1_vllm_d1", 0)):
        r = dp.requests(step_trace_summary.read_trace(f"{base}/{run}.steps.jsonl.gz"), w)
        got = dp.duplicate_tokens(r)
        if got != want or any(x["step"] is None for x in r.values()):
            failures.append(f"{run}: {got} duplicate tokens (want {want}) or unmatched requests")
else:
    failures.append(f"{sim} missing: build build/main first")

# 3. Bad input.
bad = os.path.join(tmp, "bad.jsonl")
with open(bad, "w") as f:
    f.write(json.dumps(steps[0]) + "\n{\"session\": \"x\"}\n")
result = subprocess.run([sys.executable, "bench/duplicate_prefill.py", bad, trace],
                        capture_output=True, text=True)
if result.returncode != 2 or f"{bad}:2:" not in result.stderr:
    failures.append(f"bad workload: exit {result.returncode}, {result.stderr.strip()!r}")

for failure in failures:
    print("FAIL:", failure)
print(f"{len(failures)} failures")
sys.exit(1 if failures else 0)
