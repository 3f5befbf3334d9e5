#!/usr/bin/env python3
"""asymcache-fit-steps against the committed measurements (ctest bench.fit_steps).

1. Refitting docs/results/step_grid/step_grid.json from calibration/h100-llama-3-8b.json
   reproduces the committed calibration/h200-llama-3-8b-steps.json (every number;
   `source` names the command), so the committed file is what those measurements give.
2. The refitted model predicts every fitted step within 13% and the report lists every step
   of the measurement file.
3. Bad input: a missing file, a label the grid does not have, a malformed file and missing
   flags each end with a non-zero exit and a message naming the problem.
Usage: fit_steps_test.py FIT_STEPS_BINARY (run from the repository root).
"""
import json
import math
import os
import subprocess
import sys
import tempfile

BINARY = sys.argv[1]
MEASURED = "docs/results/step_grid/step_grid.json"
BASE = "calibration/h100-llama-3-8b.json"
COMMITTED = "calibration/h200-llama-3-8b-steps.json"


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
    result = run(f"--measured={MEASURED}", f"--calibration={BASE}", f"--fit_out={fitted_path}",
                 f"--out={report_path}")
    if result.returncode != 0:
        sys.exit(f"refit failed ({result.returncode}): {result.stderr}")
    fitted = json.load(open(fitted_path))
    committed = json.load(open(COMMITTED))
    for key in sorted(set(fitted) | set(committed)):
        if key == "source":
            continue
        if not close(fitted.get(key), committed.get(key)):
            failures.append(f"{COMMITTED}: '{key}' differs from the refit: "
                            f"{committed.get(key)!r} vs {fitted.get(key)!r}")
    if "asymcache-fit-steps" not in fitted.get("source", ""):
        failures.append(f"source does not name the command: {fitted.get('source')!r}")
    if fitted.get("device") != json.load(open(MEASURED))["card"]:
        failures.append(f"device {fitted.get('device')!r} is not the measurement file's card")

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
    ]
    for args, want_code, want_text in cases:
        result = run(*args)
        if result.returncode != want_code or want_text not in result.stderr:
            failures.append(f"{args}: exit {result.returncode} (want {want_code}), "
                            f"stderr {result.stderr.strip()!r} (want '{want_text}')")

for failure in failures:
    print("FAIL:", failure)
print(f"{len(failures)} failures")
sys.exit(1 if failures else 0)
