#!/usr/bin/env python3
"""Tests bench/predict_seeds.py (run from the repository root by ctest).

Usage: predict_seeds_test.py ASYMCACHE_BENCH

1. Seed lists parse ('1-3,7'), empty ranges and negatives are refused.
2. Two seeds of a small doc-qa workload, three systems: the table's ratios and win counts equal the
   ones computed here from the per-seed predictions it wrote (a baseline against itself is 1 and
   never wins), and the printed table names every system; no job-latency column (no agent jobs).
   An agent workload with pins adds the job-latency ratio, equal to the one computed here.
3. Bad arguments exit 2 with the reason (an empty seed range, a baseline that was not predicted,
   two rates); a failing asymcache-bench exits 1 with its message.
"""
import json
import math
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, "bench")
import predict_seeds  # noqa: E402

bench = sys.argv[1]
failures = []


def check(condition, what):
    if not condition:
        failures.append(what)


# 1. Seed lists.
check(predict_seeds.parse_seeds("1-3,7") == [1, 2, 3, 7], "1-3,7")
for bad in ("5-1", "-2", "a", ""):
    try:
        predict_seeds.parse_seeds(bad)
        failures.append(f"parse_seeds({bad!r}) accepted")
    except ValueError:
        pass

# 2. A real run.
tmp = tempfile.mkdtemp()
out = os.path.join(tmp, "seeds.json")
bench_args = ["--workload=doc-qa", "--sessions=4", "--scale-lengths=0.05", "--rates=1",
              "--pool-blocks=256", "--model=llama-3-8b",
              "--calibration=calibration/h200-llama-3-8b-engine.json",
              "--systems=vllm,pensieve,asymcache"]
cmd = [sys.executable, "bench/predict_seeds.py", "--bench", bench, "--seeds", "1-2",
       "--baselines", "vllm,pensieve", "--json", out, "--"]
done = subprocess.run(cmd + bench_args, capture_output=True, text=True, timeout=120)
check(done.returncode == 0, f"run: exit {done.returncode}: {done.stderr}")
if done.returncode == 0:
    with open(out) as f:
        doc = json.load(f)
    check(doc["seeds"] == [1, 2], doc["seeds"])
    rows = {r["system"]: r for r in doc["table"]}
    check(list(rows) == ["vllm", "pensieve", "asymcache"], list(rows))
    preds = doc["predictions"]
    for system, row in rows.items():
        check(f"| {system} |" in done.stdout, f"{system} not printed")
        for base in ("vllm", "pensieve"):
            ratios = [preds[s][base]["ttft_s"]["mean"] / preds[s][system]["ttft_s"]["mean"]
                      for s in ("1", "2")]
            want = math.sqrt(ratios[0] * ratios[1])
            check(abs(row[f"ttft_vs_{base}"] - want) < 1e-9, (system, base, row, want))
            wins = sum(1 for s in ("1", "2")
                       if preds[s][system]["ttft_s"]["mean"] < preds[s][base]["ttft_s"]["mean"])
            check(row[f"wins_vs_{base}"] == wins, (system, base, row))
    check(rows["vllm"]["ttft_vs_vllm"] == 1.0 and rows["vllm"]["wins_vs_vllm"] == 0, rows["vllm"])
    check(rows["vllm"]["tpot_vs_vllm"] == 1.0, rows["vllm"])
    mean = (preds["1"]["asymcache"]["ttft_s"]["mean"] + preds["2"]["asymcache"]["ttft_s"]["mean"]) / 2
    check(abs(rows["asymcache"]["mean_ttft_s"] - mean) < 1e-12, rows["asymcache"])

    # doc-qa has no agent jobs: no job-latency column.
    check("job latency" not in done.stdout and "job_vs_vllm" not in rows["vllm"], rows["vllm"])

# An agent workload adds the job-latency ratio (pins over vllm as the baseline).
agent_out = os.path.join(tmp, "agent.json")
agent_args = ["--workload=agent", "--sessions=3", "--scale-lengths=0.05", "--rates=1",
              "--pool-blocks=256", "--model=llama-3-8b",
              "--calibration=calibration/h200-llama-3-8b-engine.json",
              "--systems=vllm+pins,asymcache+pins"]
done = subprocess.run([sys.executable, "bench/predict_seeds.py", "--bench", bench, "--seeds",
                       "1-2", "--baselines", "vllm+pins", "--json", agent_out, "--"] + agent_args,
                      capture_output=True, text=True, timeout=120)
check(done.returncode == 0, f"agent run: exit {done.returncode}: {done.stderr}")
if done.returncode == 0:
    with open(agent_out) as f:
        doc = json.load(f)
    check("job latency vs vllm+pins" in done.stdout, done.stdout)
    preds = doc["predictions"]
    row = {r["system"]: r for r in doc["table"]}["asymcache+pins"]
    ratios = [preds[s]["vllm+pins"]["job_latency_s"]["mean"] /
              preds[s]["asymcache+pins"]["job_latency_s"]["mean"] for s in ("1", "2")]
    check(abs(row["job_vs_vllm+pins"] - math.sqrt(ratios[0] * ratios[1])) < 1e-9, row)

# 3. Bad arguments and a failing bench.
def run(seeds, baselines, extra):
    return subprocess.run([sys.executable, "bench/predict_seeds.py", "--bench", bench,
                           "--seeds", seeds, "--baselines", baselines, "--"] + bench_args + extra,
                          capture_output=True, text=True, timeout=120)


bad = run("3-1", "vllm", [])
check(bad.returncode == 2 and "--seeds: range 3-1 is empty" in bad.stderr, bad.stderr)
bad = run("1", "lru-fixed", [])
check(bad.returncode == 2 and "--baselines lru-fixed not among" in bad.stderr, bad.stderr)
bad = run("1", "vllm", ["--rates=1,2"])
check(bad.returncode == 2 and "give one rate" in bad.stderr, bad.stderr)
bad = run("1", "vllm", ["--systems=bogus"])
check(bad.returncode == 1 and "unknown system 'bogus'" in bad.stderr, bad.stderr)

if failures:
    for f in failures:
        print("FAIL:", f)
    sys.exit(1)
print("predict_seeds_test: ok")
