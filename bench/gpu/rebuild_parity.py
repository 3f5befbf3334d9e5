#!/usr/bin/env python3
"""Summarizes alternating rounds of MSA and SDPA-flash (B0) on the rebuild chunks
of issue 3's targets (scripts/gpu_parity_rounds.sh writes the rounds).

A single pair of medians taken minutes apart decides a near-tie by noise (the
512-token chunk at 8k measured -0.4%, -2.1% and +0.04% against B0 in three runs
on 2026-11-27). Here both sides are measured R times, alternating in the same
call, and the verdict uses the median over rounds of each side and the
per-round ratios.

  rebuild_parity.py --rounds DIR --out-md FILE [--card NAME]

DIR holds msa_<r>.jsonl (msa_gpu_bench --sections=rebuild) and sdpa_<r>.json
(sdpa_baseline.py --quick --skip-linear) for rounds r = 1..R. Exit 0 when every
round had both sides of every configuration, 1 otherwise.
"""
import argparse
import glob
import json
import os
import statistics
import sys

CONFIGS = [(512, 8192, False), (512, 8192, True), (16, 8192, False), (16, 8192, True)]


def msa_times(path):
    out = {}
    with open(path) as f:
        for line in f:
            r = json.loads(line)
            if r.get("kind") == "rebuild" and r.get("variant", "MSA") == "MSA":
                out[(r["q_tokens"], r["pos"], bool(r["cold_l2"]))] = r["median_us"]
    return out


def b0_times(path):
    with open(path) as f:
        doc = json.load(f)
    out = {}
    for r in doc.get("attention", []):
        if r.get("kind") == "rebuild" and r.get("variant") == "B0" and "median_us" in r:
            out[(r["q_tokens"], r["pos"], bool(r["cold_l2"]))] = r["median_us"]
    return out, doc.get("meta", {}).get("device", "unknown card")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", required=True)
    ap.add_argument("--out-md", required=True)
    ap.add_argument("--command", default="bash scripts/gpu_parity_rounds.sh")
    args = ap.parse_args()
    rounds = sorted(int(os.path.basename(p)[4:-6]) for p in glob.glob(os.path.join(args.rounds, "msa_*.jsonl")))
    if not rounds:
        print(f"no msa_<r>.jsonl under {args.rounds}", file=sys.stderr)
        return 1
    per_round = []
    card = "unknown card"
    complete = True
    for r in rounds:
        m = msa_times(os.path.join(args.rounds, f"msa_{r}.jsonl"))
        sdpa_path = os.path.join(args.rounds, f"sdpa_{r}.json")
        b, card = b0_times(sdpa_path) if os.path.exists(sdpa_path) else ({}, card)
        per_round.append((r, m, b))
        complete &= all(c in m and c in b for c in CONFIGS)
    lines = [f"# Rebuild chunks vs SDPA-flash B0, alternating rounds ({card})", "",
             f"- command: `{args.command}` (on the lent GPU machine); {len(rounds)} rounds, each "
             "`msa_gpu_bench --sections=rebuild` then `sdpa_baseline.py --quick --skip-linear`",
             "- times: each side's per-round median of CUDA-graph replays (warm L2) or per-call events (cold L2)",
             "", "| q tokens | pos | L2 | MSA µs per round | B0 µs per round | MSA median | B0 median | "
             "MSA/B0 (medians) | MSA/B0 per round (min–max) | rounds MSA ≤ B0 |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for c in CONFIGS:
        ms = [m[c] for _, m, b in per_round if c in m and c in b]
        bs = [b[c] for _, m, b in per_round if c in m and c in b]
        if not ms:
            lines.append(f"| {c[0]} | {c[1]} | {'cold' if c[2] else 'warm'} | — | — | — | — | — | — | — |")
            continue
        ratios = [x / y for x, y in zip(ms, bs)]
        wins = sum(1 for x in ratios if x <= 1.0)
        lines.append(
            f"| {c[0]} | {c[1]} | {'cold' if c[2] else 'warm'} | {', '.join(f'{x:.1f}' for x in ms)} | "
            f"{', '.join(f'{x:.1f}' for x in bs)} | {statistics.median(ms):.1f} | {statistics.median(bs):.1f} | "
            f"{statistics.median(ms) / statistics.median(bs):.3f} | {min(ratios):.3f}–{max(ratios):.3f} | "
            f"{wins}/{len(ratios)} |")
    with open(args.out_md, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if complete else 1


if __name__ == "__main__":
    sys.exit(main())
