#!/usr/bin/env python3
"""asymcache-bench --repredict against the JSON of a real (CPU) bench run.

The run is scripts/gpu_e2e_run.sh's CPU part (ctest loadgen.gpu_e2e_cpu_run,
fixture e2e_cpu_json). Its workload flags are read from the command the JSON
records.
1. With the calibration each run recorded, every run's prediction is exactly
   the one the bench made during the run (same simulator, same inputs), with
   the worker's memory behaviour, recorded in the output; --predict-memory=
   reserve predicts with outputs reserved at admission and records that.
2. With a calibration whose step overhead is 5 ms longer, every run's predicted
   mean TTFT is longer than that.
3. A run whose recorded engine options name another stall cap
   (max_step_latency_ms) is re-predicted with that cap, and records it; a run
   recorded before the prefill order and the deferral existed (no
   prefill_order, no defer_pending_tokens) is re-predicted with arrival order
   and no deferral.
4. Workload flags that do not regenerate the run's workload (another session
   count, another delay scale), a file that is not a bench JSON, a missing
   file, a run without its pool size and runs without a recorded calibration
   (and no --calibration), a recorded stall cap that is not a number >= 0, an
   unknown prefill order and a negative deferral are refused with a message
   naming the problem.
Usage: repredict_test.py ASYMCACHE_BENCH RUN_JSON OUT_DIR
"""
import json
import math
import os
import shlex
import subprocess
import sys

bench, run_json, out_dir = sys.argv[1], sys.argv[2], sys.argv[3]
os.makedirs(out_dir, exist_ok=True)
doc = json.load(open(run_json))
WORKLOAD_FLAGS = ("--workload", "--sessions", "--seed", "--scale-lengths", "--scale-delays",
                  "--trace", "--model")
workload_args = [a for a in shlex.split(doc["command"])[1:]
                 if a.split("=", 1)[0].replace("_", "-") in WORKLOAD_FLAGS]
assert any(a.startswith("--workload") for a in workload_args), doc["command"]


def run(*args):
    return subprocess.run([bench, *args], capture_output=True, text=True, timeout=120)


failures = []
out = os.path.join(out_dir, "repredicted.json")


def variant(name, change):
    """Writes a copy of the run's JSON with `change(copy)` applied; returns its path."""
    copy = json.loads(json.dumps(doc))
    change(copy)
    path = os.path.join(out_dir, name)
    json.dump(copy, open(path, "w"))
    return path


result = run(*workload_args, f"--repredict={run_json}", f"--json={out}")
if result.returncode != 0:
    sys.exit(f"--repredict failed ({result.returncode}): {result.stderr}")
print(result.stdout)
again = json.load(open(out))
if len(again["runs"]) != len(doc["runs"]):
    failures.append(f"{len(again['runs'])} runs re-predicted, {len(doc['runs'])} in the file")
for before, now in zip(doc["runs"], again["runs"]):
    want = before["predicted"]["ttft_s"]["mean"]
    got = now["predicted"]["ttft_s"]["mean"]
    if now["system"] != before["system"] or not math.isclose(got, want, rel_tol=1e-9):
        failures.append(f"{before['system']}: re-predicted TTFT {got} != the run's {want}")
    if not math.isclose(now["measured_ttft_s"], before["summary"]["ttft_s"]["mean"], rel_tol=1e-12):
        failures.append(f"{before['system']}: measured TTFT not the file's")
    if now["predicted_engine_options"] != before["predicted_engine_options"]:
        failures.append(f"{before['system']}: engine options {now['predicted_engine_options']} "
                        f"!= the run's {before['predicted_engine_options']}")
    if not now["predicted_engine_options"]["grow_output_blocks"]:
        failures.append(f"{before['system']}: not predicted with the worker's memory")

result = run(*workload_args, f"--repredict={run_json}", "--predict-memory=reserve", f"--json={out}")
if result.returncode != 0:
    failures.append(f"--repredict --predict-memory=reserve failed: {result.stderr}")
else:
    for now in json.load(open(out))["runs"]:
        options = now["predicted_engine_options"]
        if options["grow_output_blocks"] or options["commit_at_prefill_end"]:
            failures.append(f"{now['system']}: --predict-memory=reserve recorded {options}")

slower = dict(doc["runs"][0]["calibration"])
slower["step_overhead_s"] = slower.get("step_overhead_s", 0) + 0.005
slower_path = os.path.join(out_dir, "slower.json")
json.dump(slower, open(slower_path, "w"))
result = run(*workload_args, f"--repredict={run_json}", f"--calibration={slower_path}",
             f"--json={out}")
if result.returncode != 0:
    failures.append(f"--repredict --calibration failed: {result.stderr}")
else:
    for before, now in zip(doc["runs"], json.load(open(out))["runs"]):
        if not now["predicted"]["ttft_s"]["mean"] > before["predicted"]["ttft_s"]["mean"]:
            failures.append(f"{before['system']}: a 5 ms longer step did not lengthen TTFT")

def cap_75(d):
    for r in d["runs"]:
        r["predicted_engine_options"]["max_step_latency_ms"] = 75.0


other_cap = variant("other_cap.json", cap_75)
result = run(*workload_args, f"--repredict={other_cap}", f"--json={out}")
if result.returncode != 0:
    failures.append(f"--repredict with a recorded 75 ms cap failed: {result.stderr}")
else:
    for now in json.load(open(out))["runs"]:
        if now["predicted_engine_options"]["max_step_latency_ms"] != 75.0:
            failures.append(f"{now['system']}: the recorded 75 ms stall cap was not used: "
                            f"{now['predicted_engine_options']}")


def before_order_and_deferral(d):
    for r in d["runs"]:
        r.pop("prefill_order", None)
        r["predicted_engine_options"].pop("defer_pending_tokens", None)


older_runs = variant("older_runs.json", before_order_and_deferral)
result = run(*workload_args, f"--repredict={older_runs}", f"--json={out}")
if result.returncode != 0:
    failures.append(f"--repredict of runs without prefill_order / deferral failed: {result.stderr}")
else:
    for now in json.load(open(out))["runs"]:
        if now["predicted_engine_options"]["defer_pending_tokens"] != 0:
            failures.append(f"{now['system']}: an older run re-predicted with a deferral: "
                            f"{now['predicted_engine_options']}")
if not any(r.get("prefill_order") == "least-remaining" for r in doc["runs"] if r["system"] == "asymcache"):
    failures.append("the asymcache run does not record prefill_order least-remaining")


def with_flag(name, value):
    return [a for a in workload_args if not a.startswith(name + "=")] + [f"{name}={value}"]

not_bench = os.path.join(out_dir, "not_bench.json")
json.dump({"schema": "something.else"}, open(not_bench, "w"))
# The run's own file with one run missing its pool size, and with no recorded calibration.
no_pool = variant("no_pool.json", lambda d: d["runs"][0].pop("pool_blocks"))
no_calibration = variant("no_calibration.json",
                         lambda d: [r.pop("calibration") for r in d["runs"]])
bad_slo = variant("bad_slo.json", lambda d: d["runs"][0].update(tpot_slo="p99"))
bad_order = variant("bad_order.json", lambda d: d["runs"][0].update(prefill_order="random"))
bad_defer = variant("bad_defer.json", lambda d: d["runs"][0]["predicted_engine_options"].update(
    defer_pending_tokens=-5))
bad_cap = variant("bad_cap.json", lambda d: d["runs"][0]["predicted_engine_options"].update(
    max_step_latency_ms=-1))
cases = [
    (with_flag("--sessions", 7) + [f"--repredict={run_json}"], 1, "do not regenerate"),
    (with_flag("--scale-delays", 0.5) + [f"--repredict={run_json}"], 1, "--scale-delays="),
    (workload_args + [f"--repredict={not_bench}"], 2, "not an asymcache.bench.v1 JSON"),
    (workload_args + ["--repredict=/nonexistent/run.json"], 2, "cannot open"),
    (workload_args + [f"--repredict={no_pool}"], 2, "runs[0]: needs system, rate, pool_blocks"),
    (workload_args + [f"--repredict={no_calibration}"], 2, "records no calibration"),
    (workload_args + [f"--repredict={bad_slo}"], 2,
     "runs[0]: tpot_slo must be request-mean or per-step, got 'p99'"),
    (workload_args + [f"--repredict={bad_cap}"], 2,
     "runs[0]: predicted_engine_options.max_step_latency_ms must be a number >= 0, got -1"),
    (workload_args + [f"--repredict={bad_order}"], 2,
     "runs[0]: prefill_order must be arrival or least-remaining, got 'random'"),
    (workload_args + [f"--repredict={bad_defer}"], 2,
     "runs[0]: predicted_engine_options.defer_pending_tokens must be an integer >= 0, got -5"),
    (workload_args + [f"--repredict={run_json}", "--predict-memory=guess"], 2,
     "--predict-memory must be worker or reserve"),
]
for args, code, text in cases:
    result = run(*args)
    if result.returncode != code or text not in result.stderr:
        failures.append(f"{args[-1]} ({args[-2]}): exit {result.returncode} (want {code}), "
                        f"stderr {result.stderr.strip()!r} (want '{text}')")

for failure in failures:
    print("FAIL:", failure)
print(f"{len(failures)} failures")
sys.exit(1 if failures else 0)
