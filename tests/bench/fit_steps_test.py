#!/usr/bin/env python3
"""asymcache-fit-steps against the committed measurements (ctest bench.fit_steps).

1. Refitting docs/results/step_grid_h200_v3/step_grid.json (H200) and
   docs/results/step_grid_h100/step_grid.json (H100) from calibration/h100-llama-3-8b.json
   reproduces the committed calibration/h200-llama-3-8b-steps.json and
   calibration/h100-llama-3-8b-steps.json (every number; `source` names the command), so the
   committed files are what those measurements give.
2. The refitted model predicts every fitted step within 13% and the report lists every step
   of the measurement file.
3. Bad input: a missing file, a label the grid does not have, a malformed file and missing
   flags each end with a non-zero exit and a message naming the problem.
4. --trace (a worker's --step-trace): steps are classed (decode only, prefill only, mixed) and
   totalled; a trace whose forward times are the model's own predictions has no error; the
   engine time outside the forward (step_ms - forward_ms) is reported and --fit_out adds its
   mean to step_overhead_s (nothing else changes); bad traces are refused naming the line.
5. The committed calibration/h100-llama-3-8b-engine.json and h200-llama-3-8b-engine.json are
   what --trace --fit_out gives from the card's step-fitted file and that card's seed-6
   long-doc-qa vllm run's trace (docs/results/e2e_h100_engine/traces/ and
   docs/results/e2e_h200_defer/traces/, gzipped).
Usage: fit_steps_test.py FIT_STEPS_BINARY (run from the repository root).
"""
import gzip
import json
import math
import os
import subprocess
import sys
import tempfile

BINARY = sys.argv[1]
MEASURED = "docs/results/step_grid_h200_v3/step_grid.json"
BASE = "calibration/h100-llama-3-8b.json"
COMMITTED = "calibration/h200-llama-3-8b-steps.json"
# (measurement file, the calibration committed from it)
COMMITTED_FITS = [(MEASURED, COMMITTED),
                  ("docs/results/step_grid_h100/step_grid.json", "calibration/h100-llama-3-8b-steps.json")]


def run(*args):
    return subprocess.run([BINARY, *args], capture_output=True, text=True, timeout=60)


def close(a, b):
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-15)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(close(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(close(a[k], b[k]) for k in a)
    return a == b


failures = []
with tempfile.TemporaryDirectory() as tmp:
    fitted_path = os.path.join(tmp, "fitted.json")
    report_path = os.path.join(tmp, "report.json")
    for measured, committed_path in reversed(COMMITTED_FITS):  # MEASURED's report last
        result = run(f"--measured={measured}", f"--calibration={BASE}", f"--fit_out={fitted_path}",
                     f"--out={report_path}")
        if result.returncode != 0:
            sys.exit(f"refit of {measured} failed ({result.returncode}): {result.stderr}")
        fitted = json.load(open(fitted_path))
        committed = json.load(open(committed_path))
        for key in sorted(set(fitted) | set(committed)):
            if key == "source":
                continue
            if not close(fitted.get(key), committed.get(key)):
                failures.append(f"{committed_path}: '{key}' differs from the refit: "
                                f"{committed.get(key)!r} vs {fitted.get(key)!r}")
        if "asymcache-fit-steps" not in fitted.get("source", ""):
            failures.append(f"source does not name the command: {fitted.get('source')!r}")
        if fitted.get("device") != json.load(open(measured))["card"]:
            failures.append(f"device {fitted.get('device')!r} is not {measured}'s card")

    report = json.load(open(report_path))
    measured_labels = [s["label"] for s in json.load(open(MEASURED))["steps"]]
    report_labels = [s["label"] for s in report["steps"]]
    if sorted(report_labels) != sorted(measured_labels):
        failures.append("the report's steps are not the measurement file's")
    for step in report["steps"]:
        if step["fitted"]:
            error = abs(step["fitted_predicted_ms"] - step["measured_ms"]) / step["measured_ms"]
            if error > 0.13:
                failures.append(f"{step['label']}: fitted model off by {error:.1%}")

    bad_label = os.path.join(tmp, "bad_label.json")
    json.dump({"steps": [{"label": "decode b=3 ctx=7", "measured_ms": 5.0}]}, open(bad_label, "w"))
    malformed = os.path.join(tmp, "malformed.json")
    open(malformed, "w").write('{"steps": [{"label": 4}]}')
    not_json = os.path.join(tmp, "not.json")
    open(not_json, "w").write("step,ms\n")
    cases = [
        (["--measured=/nonexistent/grid.json", f"--calibration={BASE}"], 1, "cannot open"),
        ([f"--measured={bad_label}", f"--calibration={BASE}"], 1, "not in the grid"),
        ([f"--measured={malformed}", f"--calibration={BASE}"], 1, "steps[0] needs"),
        ([f"--measured={not_json}", f"--calibration={BASE}"], 1, "not a JSON object"),
        ([f"--measured={MEASURED}", "--calibration=/nonexistent/base.json"], 1, "NOT_FOUND"),
        ([f"--measured={MEASURED}"], 2, "required"),
        ([f"--calibration={BASE}"], 2, "one of --measured and --trace"),
    ]
    for args, want_code, want_text in cases:
        result = run(*args)
        if result.returncode != want_code or want_text not in result.stderr:
            failures.append(f"{args}: exit {result.returncode} (want {want_code}), "
                            f"stderr {result.stderr.strip()!r} (want '{want_text}')")

    # --trace: one step of each class, measured 10 ms each first.
    llama = {"name": "llama-3-8b", "num_layers": 32, "num_q_heads": 32, "num_kv_heads": 8,
             "head_dim": 128, "dtype_bytes": 2, "block_tokens": 16, "hidden_size": 4096,
             "intermediate_size": 14336, "vocab_size": 128256}
    steps = [{"decodes": [4097] * 8, "chunks": []},
             {"decodes": [], "chunks": [[1, 8192, 9216]]},
             {"decodes": [2049] * 4, "chunks": [[9, 0, 512], [9, 512, 1024]]}]

    def write_trace(path, forward_ms, outside_ms=(0, 0, 0), header=None):
        with open(path, "w") as f:
            f.write(json.dumps(header or {"schema": "asymcache.step_trace.v1", "model": llama}) + "\n")
            for step, ms, extra in zip(steps, forward_ms, outside_ms):
                f.write(json.dumps(dict(step, t_ms=0, predicted_ms=0, forward_ms=ms,
                                        step_ms=ms + extra, waiting=0)) + "\n")

    trace = os.path.join(tmp, "steps.jsonl")
    out = os.path.join(tmp, "trace_report.json")
    write_trace(trace, [10.0, 10.0, 10.0])
    result = run(f"--trace={trace}", f"--calibration={COMMITTED}", f"--out={out}")
    if result.returncode != 0:
        failures.append(f"--trace failed: {result.stderr}")
    else:
        classes = {c["class"]: c for c in json.load(open(out))["classes"]}
        if sorted(classes) != ["all", "decode only", "mixed", "prefill only"]:
            failures.append(f"--trace classes {sorted(classes)}")
        elif classes["all"]["steps"] != 3 or abs(classes["all"]["measured_s"] - 0.03) > 1e-9:
            failures.append(f"--trace totals {classes['all']}")
        else:
            predicted = [classes[c]["predicted_s"] * 1e3 for c in ("decode only", "prefill only", "mixed")]
            write_trace(trace, predicted)
            result = run(f"--trace={trace}", f"--calibration={COMMITTED}", f"--out={out}")
            total = {c["class"]: c for c in json.load(open(out))["classes"]}["all"]["total_error"]
            if result.returncode != 0 or abs(total) > 1e-9:
                failures.append(f"a trace of the model's own predictions has error {total}")
    # Engine time outside the forward: 0.5, 1 and 1.5 ms -> 1 ms per step added to the
    # calibration's step_overhead_s, every other number unchanged.
    write_trace(trace, [10.0, 10.0, 10.0], outside_ms=(0.5, 1.0, 1.5))
    with_engine = os.path.join(tmp, "with_engine.json")
    result = run(f"--trace={trace}", f"--calibration={COMMITTED}", f"--out={out}",
                 f"--fit_out={with_engine}")
    if result.returncode != 0:
        failures.append(f"--trace --fit_out failed: {result.stderr}")
    else:
        report = json.load(open(out))
        if not close(report.get("engine_outside_forward_s_per_step"), 0.001):
            failures.append(f"engine time outside the forward {report.get('engine_outside_forward_s_per_step')}")
        if "1.000 ms per step" not in result.stdout:
            failures.append(f"--trace does not print the engine time: {result.stdout!r}")
        base = json.load(open(COMMITTED))
        got = json.load(open(with_engine))
        for key in sorted(set(base) | set(got)):
            want = base.get(key) + 0.001 if key == "step_overhead_s" else base.get(key)
            if key != "source" and not close(got.get(key), want):
                failures.append(f"--trace --fit_out: '{key}' is {got.get(key)!r}, want {want!r}")
        if "outside the forward" not in got.get("source", ""):
            failures.append(f"--trace --fit_out source: {got.get('source')!r}")
    bad_cases = [
        ('{"schema": "something.else"}\n', "not an asymcache.step_trace.v1 file"),
        (json.dumps({"schema": "asymcache.step_trace.v1", "model": llama}) +
         '\n{"decodes": [5], "chunks": [], "forward_ms": 2, "step_ms": 1}\n',
         ":2: step_ms is less than forward_ms"),
        ('{"schema": "asymcache.step_trace.v1"}\n', "no \"model\" in the header"),
        (json.dumps({"schema": "asymcache.step_trace.v1", "model": llama}) + '\n{"decodes": 3}\n',
         ":2: needs"),
        (json.dumps({"schema": "asymcache.step_trace.v1", "model": llama}) +
         '\n{"decodes": [], "chunks": [[1, 2]], "forward_ms": 1}\n', ":2: a chunk is not"),
    ]
    for text, want in bad_cases:
        open(trace, "w").write(text)
        result = run(f"--trace={trace}", f"--calibration={COMMITTED}")
        if result.returncode != 1 or want not in result.stderr:
            failures.append(f"bad trace {text[:40]!r}: exit {result.returncode}, {result.stderr.strip()!r}")
    result = run(f"--trace={trace}", f"--measured={MEASURED}", f"--calibration={BASE}")
    if result.returncode != 2 or "one of --measured and --trace" not in result.stderr:
        failures.append(f"--trace with --measured: exit {result.returncode}, {result.stderr.strip()!r}")

    # 5. The engine-overhead calibrations from committed GPU traces.
    engine_fits = [
        ("docs/results/e2e_h100_engine/traces/longdocqa-seed6-vllm-0.15.steps.jsonl.gz",
         "calibration/h100-llama-3-8b-steps.json", "calibration/h100-llama-3-8b-engine.json"),
        ("docs/results/e2e_h200_defer/traces/s6_vllm_d1.steps.jsonl.gz",
         "calibration/h200-llama-3-8b-steps.json", "calibration/h200-llama-3-8b-engine.json"),
    ]
    for trace_gz, steps_file, engine_committed in engine_fits:
        plain = os.path.join(tmp, os.path.basename(trace_gz)[:-len(".gz")])
        with gzip.open(trace_gz, "rb") as src, open(plain, "wb") as dst:
            dst.write(src.read())
        engine_fitted = os.path.join(tmp, "engine.json")
        result = run(f"--trace={plain}", f"--calibration={steps_file}", f"--fit_out={engine_fitted}")
        if result.returncode != 0:
            failures.append(f"engine refit from {trace_gz} failed: {result.stderr}")
            continue
        fitted = json.load(open(engine_fitted))
        committed = json.load(open(engine_committed))
        for key in sorted(set(fitted) | set(committed)):
            if key != "source" and not close(fitted.get(key), committed.get(key)):
                failures.append(f"{engine_committed}: '{key}' differs from the refit: "
                                f"{committed.get(key)!r} vs {fitted.get(key)!r}")
        if trace_gz not in committed.get("source", ""):
            failures.append(f"{engine_committed}: source does not name {trace_gz}")

for failure in failures:
    print("FAIL:", failure)
print(f"{len(failures)} failures")
sys.exit(1 if failures else 0)
