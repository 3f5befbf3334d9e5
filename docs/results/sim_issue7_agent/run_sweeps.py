#!/usr/bin/env python3
"""Issue #7 simulator sweeps (docs/simulator.md, "Issue #7: agent job latency and capacity in the
simulator"). Every run replays a trace written by the generators, so that --rate is the
*realized* session start rate, (sessions - 1) / (last start - first start), as asymcache-bench's
--rates is (Workload::WithSessionRate); --scale F multiplies tool and think times as
asymcache-bench's --scale-delays does. Flags are the bench's prediction's (bench_main.cc,
Predict): --max-running 128 --max-chunk-tokens 8064, overload budget 2048 (the default).

usage: [SIM=path/to/asymcache-sim] run_sweeps.py --workload W --pool-gib G --seeds 1,2,3,4
           --rates r1,r2,... [--sessions N] [--scale F] [--commit both|off|on] [--pins off,on]
           [--out results.csv]
Each (seed, pins off/on, commit point) is one asymcache-sim invocation with --sweep; the rows
(one per system and rate) are appended to --out.
"""
import argparse, csv, json, os, subprocess, sys

SIM = os.environ.get("SIM", "build/main/sim/asymcache-sim")  # env SIM: another binary
CAL = "calibration/h100-llama-3-8b-engine.json"
TMP = os.environ.get("TRACE_DIR", "/tmp/asymcache-issue7")  # generated traces (reused)
FIELDS = ["workload", "sessions", "scale", "pool_gib", "seed", "commit", "pins", "system", "rate",
          "finished", "rejected", "hit", "rebuilt", "new_tokens", "prompt_tokens", "ttft_mean",
          "ttft_p50", "ttft_p99", "tpot_mean", "tpot_p99", "job_mean", "pins_granted", "evictions",
          "makespan", "meets_slo"]


def trace(workload, sessions, seed, scale):
    os.makedirs(TMP, exist_ok=True)
    base = f"{TMP}/{workload}-n{sessions}-s{seed}.jsonl"
    if not os.path.exists(base):
        cmd = [SIM, "--workload", workload, "--seed", str(seed), "--dump-trace", base]
        if sessions:
            cmd += ["--requests", str(sessions)]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    if scale == 1.0:
        return base
    scaled = base.replace(".jsonl", f"-x{scale}.jsonl")
    with open(base) as i, open(scaled, "w") as o:
        for line in i:
            if line.strip():
                d = json.loads(line)
                for k in ("tool_s", "think_s"):
                    if k in d:
                        d[k] *= scale
                o.write(json.dumps(d, separators=(",", ":")) + "\n")
    return scaled


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--workload", required=True)
    p.add_argument("--sessions", type=int, default=0)
    p.add_argument("--scale", type=float, default=1.0)
    p.add_argument("--pool-gib", type=float, required=True)
    p.add_argument("--seeds", default="1,2,3,4")
    p.add_argument("--rates", required=True)
    p.add_argument("--commit", default="both")
    p.add_argument("--pins", default="off,on")
    p.add_argument("--systems-off", default="vllm,pensieve,asymcache")
    p.add_argument("--systems-on", default="vllm,asymcache")
    p.add_argument("--slo-ttft", default="2")
    p.add_argument("--out", default="results.csv")
    a = p.parse_args()
    commits = {"both": [False, True], "off": [False], "on": [True]}[a.commit]
    new = not os.path.exists(a.out)
    with open(a.out, "a", newline="") as f:
        w = csv.DictWriter(f, FIELDS)
        if new:
            w.writeheader()
        for seed in a.seeds.split(","):
            tr = trace(a.workload, a.sessions, int(seed), a.scale)
            for commit in commits:
                for pins in a.pins.split(","):
                    systems = a.systems_on if pins == "on" else a.systems_off
                    js = f"{TMP}/out.json"
                    cmd = [SIM, "--trace", tr, "--sweep", a.rates, "--system", systems,
                           "--agent-pins", pins, "--pool-gib", str(a.pool_gib), "--calibration", CAL,
                           "--max-running", "128", "--max-chunk-tokens", "8064",
                           "--slo-ttft", a.slo_ttft, "--threads", "2", "--json", js]
                    if commit:
                        cmd.append("--commit-at-prefill-end")
                    print(" ".join(cmd), file=sys.stderr, flush=True)
                    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
                    d = json.load(open(js))
                    for pt in d["points"]:
                        for s in pt["systems"]:
                            w.writerow(dict(
                                workload=a.workload, sessions=d["run"]["sessions"], scale=a.scale,
                                pool_gib=a.pool_gib, seed=seed, commit=int(commit), pins=pins,
                                system=s["system"], rate=pt["rate"], finished=s["finished"],
                                rejected=s["rejected"], hit=s["block_hit_rate"],
                                rebuilt=s["rebuilt_tokens"], new_tokens=s["new_tokens"],
                                prompt_tokens=s["prompt_tokens"], ttft_mean=s["ttft_s"]["mean"],
                                ttft_p50=s["ttft_s"]["p50"], ttft_p99=s["ttft_s"]["p99"],
                                tpot_mean=s["tpot_s"]["mean"], tpot_p99=s["tpot_s"]["p99"],
                                job_mean=s.get("job_latency_mean_s", ""),
                                pins_granted=s.get("pins_granted", ""), evictions=s["evictions"],
                                makespan=s["makespan_s"], meets_slo=int(s["meets_slo"])))
                    f.flush()


if __name__ == "__main__":
    main()
