"""asymcache-bench end to end: clusters it starts itself, checked through its JSON.

Usage: bench_cli_test.py ASYMCACHE_BENCH OUT_DIR
"""
import json
import os
import subprocess
import sys

bench, out_dir = sys.argv[1], sys.argv[2]
os.makedirs(out_dir, exist_ok=True)
result_path = os.path.join(out_dir, "result.json")


def run(args, timeout):
    return subprocess.run([bench] + args, capture_output=True, text=True, timeout=timeout)


# Bad usage: a precise message, exit 2, nothing started.
bad = run(["--systems=bogus"], 30)
assert bad.returncode == 2, (bad.returncode, bad.stderr)
assert "unknown system 'bogus'" in bad.stderr, bad.stderr
bad = run(["--systems=vllm@fifo"], 30)
assert bad.returncode == 2, (bad.returncode, bad.stderr)
assert "prefill order must be @arrival or @least-remaining" in bad.stderr, bad.stderr
bad = run(["--rates=0"], 30)
assert bad.returncode == 2 and "--rates: bad rate '0'" in bad.stderr, bad.stderr
bad = run(["--overload-budget-tokens=100"], 30)
assert bad.returncode == 2, (bad.returncode, bad.stderr)
assert "--overload-budget-tokens must be 0 (off) or a positive multiple of 16" in bad.stderr, bad.stderr
bad = run(["--tpot-slo=p99"], 30)
assert bad.returncode == 2, (bad.returncode, bad.stderr)
assert "--tpot-slo must be request-mean or per-step, got 'p99'" in bad.stderr, bad.stderr
bad = run(["--predict-memory=guess"], 30)
assert bad.returncode == 2, (bad.returncode, bad.stderr)
assert "--predict-memory must be worker or reserve, got 'guess'" in bad.stderr, bad.stderr
# An unreachable target: exit 1 naming it.
down = run(["--target=127.0.0.1:1", "--workload=chat", "--sessions=1"], 60)
assert down.returncode == 1, (down.returncode, down.stderr)
assert "127.0.0.1:1" in down.stderr, down.stderr

# --predict-only: the simulator's prediction of every system x rate, nothing
# started; the order suffix reaches the prediction.
calibration = os.path.join(os.getcwd(), "calibration", "h200-llama-3-8b-engine.json")
predict_path = os.path.join(out_dir, "predict.json")
predict_args = ["--predict-only", "--pool-blocks=256", "--model=llama-3-8b",
                "--calibration=" + calibration, "--workload=doc-qa", "--sessions=4",
                "--scale-lengths=0.05", "--rates=0.5,2",
                "--systems=pensieve,pensieve@least-remaining,asymcache"]
bad = run(predict_args[:3] + predict_args[4:], 30)  # no --calibration
assert bad.returncode == 2 and "--predict-only needs --calibration" in bad.stderr, bad.stderr
bad = run(["--pool-blocks=0"] + predict_args[:1] + predict_args[2:], 30)
assert bad.returncode == 2 and "--predict-only needs --pool-blocks > 0" in bad.stderr, bad.stderr
bad = run(predict_args + ["--target=127.0.0.1:1"], 30)
assert bad.returncode == 2 and "--predict-only starts nothing" in bad.stderr, bad.stderr
predicted = run(predict_args + ["--json=" + predict_path], 120)
assert predicted.returncode == 0, predicted.stderr
with open(predict_path) as f:
    prediction = json.load(f)
assert prediction["schema"] == "asymcache.predict.v1", prediction
keys = [(r["system"], r["rate"]) for r in prediction["runs"]]
assert keys == [(s, r) for r in (0.5, 2) for s in ("pensieve", "pensieve@least-remaining",
                                                   "asymcache")], keys
for r in prediction["runs"]:
    assert r["predicted"]["finished"] == prediction["steps"], r
    assert r["predicted"]["ttft_s"]["mean"] > 0, r
    assert r["predicted_engine_options"]["pool_blocks"] == 256, r
    assert r["system"] in predicted.stdout
orders = {r["system"]: r["prefill_order"] for r in prediction["runs"]}
assert orders == {"pensieve": "arrival", "pensieve@least-remaining": "least-remaining",
                  "asymcache": "least-remaining"}, orders

# A coordinator, two daemons, a prefill and a decode worker per system; a
# 3 MiB pool (96 blocks of the tiny shape, 1536 tokens) so that the workload evicts.
args = [
    "--workload=agent,chat", "--sessions=2", "--scale-lengths=0.03", "--scale-delays=0.02",
    "--systems=none@least-remaining,vllm,asymcache", "--split-roles", "--daemons=2", "--pool-bytes=3MiB",
    "--cpu-threads=1", "--rates=4", "--require-same-tokens", "--require-no-errors",
    "--log-dir=" + os.path.join(out_dir, "logs"), "--json=" + result_path,
]
done = run(args, 240)
print(done.stdout)
print(done.stderr, file=sys.stderr)
assert done.returncode == 0, done.returncode
assert "identical token for token" in done.stdout

with open(result_path) as f:
    result = json.load(f)
runs = {r["system"]: r for r in result["runs"]}
assert set(runs) == {"none@least-remaining", "vllm", "asymcache"}, runs.keys()
runs["none"] = runs.pop("none@least-remaining")
steps = result["steps"]
for name, r in runs.items():
    s = r["summary"]
    assert s["finished"] == steps and s["failed"] == 0, (name, s)
    assert len(r["ttft_s"]) == steps and all(t > 0 for t in r["ttft_s"]), name
    assert r["token_mismatches"] == 0, name
    assert r["pool_blocks"] > 0, name
    assert "predicted" in r, (name, r.get("predict_error"))
    # The prediction holds memory as the worker does, and says so.
    assert r["predicted_engine_options"]["grow_output_blocks"] is True, (name, r)
    assert r["predicted_engine_options"]["commit_at_prefill_end"] is True, (name, r)
    assert r["predicted_engine_options"]["tpot_target_ms"] == r["tpot_target_ms"] == 50, (name, r)
# `none` never reuses; the reusing systems hit the multi-turn prefixes.
assert runs["none"]["summary"]["hit_tokens"] == 0, runs["none"]["summary"]
assert runs["vllm"]["summary"]["hit_tokens"] > 0, runs["vllm"]["summary"]
assert runs["asymcache"]["summary"]["hit_tokens"] > 0, runs["asymcache"]["summary"]
assert runs["vllm"]["chunking"] == "fixed" and runs["asymcache"]["chunking"] == "adaptive"
assert runs["vllm"]["policy"] == "lru-tail" and runs["asymcache"]["policy"] == "asym"
# The prefill order: vllm's arrival, asymcache's least-remaining, and a suffix
# overriding a system's (the bench starts that system's workers with it).
assert runs["vllm"]["prefill_order"] == "arrival", runs["vllm"]
assert runs["asymcache"]["prefill_order"] == "least-remaining", runs["asymcache"]
assert runs["none"]["prefill_order"] == "least-remaining", runs["none"]
assert runs["none"]["policy"] == "lru" and runs["none"]["reuse"] is False, runs["none"]
print("bench_cli_test: ok")
