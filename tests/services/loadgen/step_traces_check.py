#!/usr/bin/env python3
"""ctest loadgen.e2e_cpu_step_traces: the CPU run of scripts/gpu_e2e_run.sh with STEP_TRACES=1
left, for every (system, rate) run of the JSON, a worker step trace under OUT/cpu-traces whose
header is asymcache.step_trace.v1 with the model's shape, whose step count is the run's worker
step count, and whose every line holds work and a forward time.
Usage: step_traces_check.py OUT
"""
import json
import os
import sys

out = sys.argv[1]
runs = json.load(open(os.path.join(out, "cpu.json")))["runs"]
failures = []
for run in runs:
    path = os.path.join(out, "cpu-traces", f"{run['system']}-{run['rate']:g}", "worker-0.steps.jsonl")
    if not os.path.exists(path):
        failures.append(f"{path}: missing")
        continue
    lines = open(path).read().splitlines()
    header = json.loads(lines[0])
    if header.get("schema") != "asymcache.step_trace.v1" or header.get("model", {}).get("name") != "tiny":
        failures.append(f"{path}: header {header}")
    steps = [json.loads(line) for line in lines[1:]]
    for step in steps:
        if not (step["decodes"] or step["chunks"]) or step["forward_ms"] <= 0:
            failures.append(f"{path}: step without work or time: {step}")
            break
    want = run.get("worker", {}).get("steps")
    if want is not None and len(steps) != want:
        failures.append(f"{path}: {len(steps)} steps, the run's worker counted {want}")
    print(f"{path}: {len(steps)} steps")
for failure in failures:
    print("FAIL:", failure)
sys.exit(1 if failures or not runs else 0)
