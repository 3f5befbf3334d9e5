#!/usr/bin/env python3
"""Ranks systems by the simulator's predictions over many workload seeds.

At saturation one workload seed's mean TTFT moves by tens of percent with the arrival times of a
few requests (the same generator at a 3% different arrival scale turned asym-fixed's seed-1
prediction from 2.7 s into 4.4 s), so a ranking from one or two seeds, simulated or measured, says
little. This script runs `asymcache-bench --predict-only` (the bench's own workload and the
worker's defaults, what --repredict checks against GPU runs) once per seed and prints, per system:
the mean over seeds of its mean TTFT and p99 TTFT, the geometric means over seeds of the ratios
baseline / system for mean TTFT and mean TPOT against each --baseline, and on how many seeds it
beats each baseline's mean TTFT. Workloads with agent jobs (every prediction has job latencies)
add the geometric mean of baseline / system for mean job latency (e.g. --baselines vllm+pins,
issue 7's agent comparison).

Usage (from the repository root):
  python3 bench/predict_seeds.py --bench build/main/services/loadgen/asymcache-bench \\
      --seeds 1-16 --baselines vllm,pensieve -- --workload=long-doc-qa --sessions=24 \\
      --rates=0.15 --pool-blocks=12288 --model=llama-3-8b \\
      --calibration=calibration/h200-llama-3-8b-engine.json --systems=vllm,pensieve,asymcache
Everything after `--` goes to asymcache-bench (one rate only). --json FILE writes the per-seed
predictions and the table. Exit 2 on bad arguments, 1 when a prediction fails (its stderr shown).
"""
import argparse
import json
import math
import os
import subprocess
import sys
import tempfile


def parse_seeds(text):
    """'1-4,9' -> [1, 2, 3, 4, 9]; ValueError on anything else."""
    seeds = []
    for part in text.split(","):
        low, sep, high = part.partition("-")
        if sep:
            first, last = int(low), int(high)
            if first > last:
                raise ValueError(f"range {part} is empty")
            seeds.extend(range(first, last + 1))
        else:
            seeds.append(int(part))
    if not seeds or any(s < 0 for s in seeds):
        raise ValueError("seeds must be integers >= 0")
    return seeds


def geometric_mean(values):
    return math.exp(sum(math.log(v) for v in values) / len(values))


def predict(bench, seed, bench_args):
    """The --predict-only runs of one seed: {system: predicted summary}."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "predict.json")
        done = subprocess.run([bench, "--predict-only", f"--seed={seed}", f"--json={path}"]
                              + bench_args, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"seed {seed}: asymcache-bench exit {done.returncode}: "
                               f"{done.stderr.strip()}")
        with open(path) as f:
            doc = json.load(f)
    rates = {r["rate"] for r in doc["runs"]}
    if len(rates) != 1:
        raise ValueError(f"give one rate (--rates=R), got {sorted(rates)}")
    return {r["system"]: r["predicted"] for r in doc["runs"]}


def table(per_seed, baselines):
    """Rows (dicts) per system, in the order of the first seed's systems."""
    systems = list(per_seed[0][1])
    rows = []
    for system in systems:
        runs = [p[system] for _, p in per_seed]
        row = {"system": system,
               "mean_ttft_s": sum(r["ttft_s"]["mean"] for r in runs) / len(runs),
               "mean_p99_ttft_s": sum(r["ttft_s"]["p99"] for r in runs) / len(runs)}
        for base in baselines:
            pairs = [(p[base], p[system]) for _, p in per_seed]
            row[f"ttft_vs_{base}"] = geometric_mean(
                [b["ttft_s"]["mean"] / s["ttft_s"]["mean"] for b, s in pairs])
            row[f"tpot_vs_{base}"] = geometric_mean(
                [b["tpot_s"]["mean"] / s["tpot_s"]["mean"] for b, s in pairs])
            row[f"wins_vs_{base}"] = sum(
                1 for b, s in pairs if s["ttft_s"]["mean"] < b["ttft_s"]["mean"])
            if has_jobs(per_seed):
                row[f"job_vs_{base}"] = geometric_mean(
                    [b["job_latency_s"]["mean"] / s["job_latency_s"]["mean"] for b, s in pairs])
        rows.append(row)
    return rows


def has_jobs(per_seed):
    """Whether every prediction has agent job latencies."""
    return all(p["job_latency_s"]["count"] > 0 and p["job_latency_s"]["mean"] > 0
               for _, predictions in per_seed for p in predictions.values())


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bench", required=True, help="the asymcache-bench binary")
    parser.add_argument("--seeds", required=True, help="e.g. 1-16 or 1,2,6")
    parser.add_argument("--baselines", default="vllm,pensieve",
                        help="systems the ratios are taken against (must be among --systems)")
    parser.add_argument("--json", default="", help="also write the predictions and table here")
    parser.add_argument("bench_args", nargs="*", help="after --: asymcache-bench flags")
    args = parser.parse_args()
    try:
        seeds = parse_seeds(args.seeds)
    except ValueError as e:
        parser.error(f"--seeds: {e}")
    baselines = [b for b in args.baselines.split(",") if b]
    per_seed = []
    try:
        for seed in seeds:
            per_seed.append((seed, predict(args.bench, seed, args.bench_args)))
    except ValueError as e:
        parser.error(str(e))
    except RuntimeError as e:
        print(f"predict_seeds: {e}", file=sys.stderr)
        return 1
    missing = [b for b in baselines if b not in per_seed[0][1]]
    if missing:
        parser.error(f"--baselines {','.join(missing)} not among the predicted systems "
                     f"{','.join(per_seed[0][1])}")
    rows = table(per_seed, baselines)
    header = f"| system | mean TTFT | mean p99 TTFT |"
    rule = "|---|---:|---:|"
    jobs = has_jobs(per_seed)
    for base in baselines:
        header += f" TTFT vs {base} | TPOT vs {base} | beats {base} |"
        rule += "---:|---:|---:|"
        if jobs:
            header += f" job latency vs {base} |"
            rule += "---:|"
    print(f"{len(seeds)} seeds ({args.seeds}); ratios are geometric means over seeds of "
          "baseline / system (> 1: the system is faster)")
    print(header)
    print(rule)
    for row in rows:
        line = f"| {row['system']} | {row['mean_ttft_s']:.2f} s | {row['mean_p99_ttft_s']:.2f} s |"
        for base in baselines:
            line += (f" {row[f'ttft_vs_{base}']:.2f}× | {row[f'tpot_vs_{base}']:.2f}× |"
                     f" {row[f'wins_vs_{base}']}/{len(seeds)} |")
            if jobs:
                line += f" {row[f'job_vs_{base}']:.2f}× |"
        print(line)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"seeds": seeds, "bench_args": args.bench_args, "table": rows,
                       "predictions": {str(s): p for s, p in per_seed}}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
