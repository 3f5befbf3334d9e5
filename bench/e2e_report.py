#!/usr/bin/env python3
"""Results page and plots from asymcache-bench JSON files (scripts/gpu_e2e_run.sh).

Usage: bench/e2e_report.py --out DIR [--title TEXT] [--card TEXT] PART.json...

Writes DIR/e2e.md (per workload: a table per rate with every system's mean and
p99 TTFT, mean TPOT, hit rate, rebuilt tokens, agent job latency, the
simulator's predicted mean TTFT and its error, and the ratios of the best
AsymCache system against each baseline) and PNG plots: DIR/e2e_<part>_ttft_cdf.png
(TTFT distribution per system at the highest rate), DIR/e2e_<part>_ttft_vs_rate.png
(mean TTFT and TPOT against load), DIR/e2e_<part>_cache.png (hit rate and
rebuilt tokens per system). Needs matplotlib (Debian python3-matplotlib).
"""
import argparse
import json
import os
import sys

BASELINES = ("vllm", "pensieve", "vllm+pins")
OURS = ("asymcache", "asymcache+pins")


def load(path):
    with open(path) as f:
        data = json.load(f)
    if data.get("schema") != "asymcache.bench.v1":
        sys.exit(f"{path}: not an asymcache-bench file (schema {data.get('schema')!r})")
    data["part"] = os.path.splitext(os.path.basename(path))[0]
    return data


def ms(seconds):
    return f"{seconds * 1e3:.1f}"


def ratio(base, ours):
    return f"{base / ours:.2f}x" if ours > 0 else "-"


def capacity(data, slo_ttft_s, slo_tpot_s):
    """Per system: the highest swept rate at which it and every lower swept rate meet the SLO
    (mean TTFT and mean TPOT, every request finished); None when it misses at the lowest."""
    out = {}
    for system in dict.fromkeys(r["system"] for r in data["runs"]):
        best = None
        for r in sorted((r for r in data["runs"] if r["system"] == system), key=lambda r: r["rate"]):
            s = r["summary"]
            ok = (s["failed"] + s["not_sent"] == 0 and s["ttft_s"]["mean"] <= slo_ttft_s
                  and s["tpot_s"]["mean"] <= slo_tpot_s)
            if not ok:
                break
            best = r["rate"]
        out[system] = best
    return out


def table(data, slo_ttft_s=None, slo_tpot_s=None):
    lines = []
    rates = sorted({r["rate"] for r in data["runs"]})
    for rate in rates:
        runs = [r for r in data["runs"] if r["rate"] == rate]
        lines.append(f"\n**{rate:g} sessions/s** (pool {runs[0].get('pool_blocks', '?')} blocks)\n")
        lines.append("| system | done | failed | mean TTFT ms | p99 TTFT ms | mean TPOT ms | "
                     "p99 TPOT ms | hit rate | rebuilt tokens | job latency s | sim TTFT ms | sim error |")
        lines.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for r in runs:
            s = r["summary"]
            p = r.get("predicted")
            sim = (f"{ms(p['ttft_s']['mean'])} | {r['predicted_ttft_error'] * 100:+.0f}%"
                   if p else "- | -")
            lines.append(
                f"| {r['system']} | {s['finished']} | {s['failed'] + s['not_sent']} | "
                f"{ms(s['ttft_s']['mean'])} | {ms(s['ttft_s']['p99'])} | {ms(s['tpot_s']['mean'])} | "
                f"{ms(s['tpot_s']['p99'])} | {s['hit_rate'] * 100:.1f}% | {s['rebuilt_tokens']} | "
                f"{s['job_latency_s']['mean']:.2f} | {sim} |")
        by = {r["system"]: r["summary"] for r in runs}
        for ours in OURS:
            if ours not in by:
                continue
            for base in BASELINES:
                if base not in by or base == ours:
                    continue
                o, b = by[ours], by[base]
                parts = [f"TTFT {ratio(b['ttft_s']['mean'], o['ttft_s']['mean'])}",
                         f"TPOT {ratio(b['tpot_s']['mean'], o['tpot_s']['mean'])}"]
                if b["job_latency_s"]["count"] and o["job_latency_s"]["count"]:
                    drop = 1 - o["job_latency_s"]["mean"] / b["job_latency_s"]["mean"]
                    parts.append(f"job latency {abs(drop) * 100:.1f}% {'lower' if drop >= 0 else 'higher'}")
                lines.append(f"\n{ours} vs {base}: " + ", ".join(parts) + " (mean; > 1x = ours faster)")
    if slo_ttft_s is not None:
        caps = capacity(data, slo_ttft_s, slo_tpot_s)
        lines.append(f"\nCapacity at SLO (mean TTFT <= {slo_ttft_s * 1e3:.0f} ms, mean TPOT <= "
                     f"{slo_tpot_s * 1e3:.0f} ms; highest swept rate meeting it at every lower rate): " +
                     ", ".join(f"{k} {('%g/s' % v) if v is not None else 'below the lowest rate'}"
                               for k, v in caps.items()))
    worker_runs = [r for r in data["runs"] if "worker" in r]
    if worker_runs:
        lines.append("\nWhere the worker's time went (worker 0's counters over the run):\n")
        lines.append("| system | rate | steps | step s | forward % | plan RPC % | other % | prefill tokens | generated |")
        lines.append("|---|---|---|---|---|---|---|---|---|")
        for r in worker_runs:
            w = r["worker"]
            step = w["step_seconds"] or 1e-12
            fwd = w["forward_seconds"] / step * 100
            rpc = w["plan_rpc_seconds"] / step * 100
            lines.append(f"| {r['system']} | {r['rate']:g} | {w['steps']} | {w['step_seconds']:.1f} | "
                         f"{fwd:.1f} | {rpc:.1f} | {100 - fwd - rpc:.1f} | {w['prefill_tokens']} | "
                         f"{w['generated_tokens']} |")
    mismatches = data.get("token_mismatches", 0)
    lines.append(f"\nRequests whose tokens differ from the first system's at the same rate: {mismatches} "
                 "(bf16 on the GPU is not batch-invariant: a different batch can flip a near-tie; "
                 "the CPU backend is exact and the CPU runs require 0).")
    return "\n".join(lines)


def plots(data, out_dir, plt):
    part = data["part"]
    runs = data["runs"]
    top = max(r["rate"] for r in runs)
    names = []
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in runs:
        if r["rate"] != top:
            continue
        values = sorted(r["ttft_s"])
        if not values:
            continue
        n = len(values)
        ax.plot([v * 1e3 for v in values], [(i + 1) / n for i in range(n)], label=r["system"])
        names.append(r["system"])
    ax.set_xscale("log")
    ax.set_xlabel("TTFT (ms)")
    ax.set_ylabel("fraction of requests")
    ax.set_title(f"{data['workload']}: TTFT at {top:g} sessions/s")
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, f"e2e_{part}_ttft_cdf.png"), dpi=110)
    plt.close(fig)

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.6))
    for system in dict.fromkeys(r["system"] for r in runs):
        points = sorted((r["rate"], r["summary"]) for r in runs if r["system"] == system)
        a1.plot([p[0] for p in points], [p[1]["ttft_s"]["mean"] * 1e3 for p in points], "o-", label=system)
        a2.plot([p[0] for p in points], [p[1]["tpot_s"]["mean"] * 1e3 for p in points], "o-", label=system)
    a1.set_xlabel("sessions/s")
    a1.set_ylabel("mean TTFT (ms)")
    a2.set_xlabel("sessions/s")
    a2.set_ylabel("mean TPOT (ms)")
    a1.legend(fontsize=7)
    fig.suptitle(f"{data['workload']}: latency against load")
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, f"e2e_{part}_ttft_vs_rate.png"), dpi=110)
    plt.close(fig)

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.6))
    at_top = [r for r in runs if r["rate"] == top]
    labels = [r["system"] for r in at_top]
    a1.bar(labels, [r["summary"]["hit_rate"] * 100 for r in at_top])
    a1.set_ylabel("hit rate (%)")
    a2.bar(labels, [r["summary"]["rebuilt_tokens"] for r in at_top])
    a2.set_ylabel("rebuilt tokens")
    for a in (a1, a2):
        a.tick_params(axis="x", rotation=30, labelsize=7)
    fig.suptitle(f"{data['workload']}: cache at {top:g} sessions/s")
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, f"e2e_{part}_cache.png"), dpi=110)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--title", default="End-to-end results")
    parser.add_argument("--card", default="(card not recorded)")
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument("--slo-ttft-ms", type=float, default=2000,
                        help="SLO on mean TTFT for the capacity line (default 2000 ms)")
    parser.add_argument("--slo-tpot-ms", type=float, default=100,
                        help="SLO on mean TPOT (default 100 ms)")
    parser.add_argument("files", nargs="+")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    datasets = [load(f) for f in args.files]
    plt = None
    if not args.no_plots:
        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            sys.exit("matplotlib is missing: apt-get install python3-matplotlib (or pass --no-plots)")
    page = [f"# {args.title}", "", f"Card: {args.card}", ""]
    for data in datasets:
        page.append(f"## {data['workload']} ({data['part']})")
        page.append(f"\n{data['sessions']} sessions, {data['steps']} requests; model {data['model']} "
                    f"({data['backend']}), pool {data['pool_bytes']}; run {data['date']}.\n")
        page.append(f"Command: `{data['command']}`")
        page.append(table(data, args.slo_ttft_ms / 1e3, args.slo_tpot_ms / 1e3))
        if plt is not None:
            plots(data, args.out, plt)
            page.append(f"\n![TTFT CDF](e2e_{data['part']}_ttft_cdf.png) "
                        f"![latency vs load](e2e_{data['part']}_ttft_vs_rate.png) "
                        f"![cache](e2e_{data['part']}_cache.png)\n")
    with open(os.path.join(args.out, "e2e.md"), "w") as f:
        f.write("\n".join(page) + "\n")
    print(f"wrote {os.path.join(args.out, 'e2e.md')}")


if __name__ == "__main__":
    main()
