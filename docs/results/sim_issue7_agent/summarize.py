#!/usr/bin/env python3
"""Tables from run_sweeps.py's CSV: per (workload, sessions, scale, pool, commit point, rate), each
system's mean over seeds (min..max) of job latency, TTFT, TPOT, hit rate, and the asymcache+pins
vs vllm+pins job-latency change per seed; capacity at SLO per system and seed.

usage: summarize.py results.csv [--slo-ttft 2] [--slo-tpot 0.1] [--markdown]"""
import argparse, collections, csv, statistics

SYSTEMS = [("vllm", "off"), ("pensieve", "off"), ("asymcache", "off"), ("vllm", "on"),
           ("asymcache", "on")]


def label(system, pins):
    return system + ("+pins" if pins == "on" else "")


def load_groups(path, filt=""):
    """The CSV's rows (kept by --filter's key=value,...) per (workload, sessions, scale, pool,
    commit), sorted: (key, rows, by (system, pins, rate, seed) -> row, rates, seeds)."""
    rows = list(csv.DictReader(open(path)))
    for kv in filter(None, filt.split(",")):
        k, v = kv.split("=")
        rows = [r for r in rows if r[k] == v]
    groups = collections.defaultdict(list)
    for r in rows:
        groups[(r["workload"], r["sessions"], r["scale"], r["pool_gib"], r["commit"])].append(r)
    for key, rs in sorted(groups.items()):
        by = {(r["system"], r["pins"], float(r["rate"]), r["seed"]): r for r in rs}
        yield (key, rs, by, sorted({float(r["rate"]) for r in rs}),
               sorted({r["seed"] for r in rs}, key=int))


def meets_slo(r, slo_ttft, slo_tpot):
    return (int(r["rejected"]) == 0 and float(r["ttft_mean"]) <= slo_ttft
            and float(r["tpot_mean"]) <= slo_tpot)


def vllm_saturation(by, rates, seed, slo_ttft, slo_tpot):
    """Index of vllm's (pins off) first swept rate missing the SLO for `seed`, or None."""
    return next((i for i, rate in enumerate(rates)
                 if (r := by.get(("vllm", "off", rate, seed))) and not meets_slo(r, slo_ttft, slo_tpot)),
                None)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("csv")
    p.add_argument("--slo-ttft", type=float, default=2.0)
    p.add_argument("--slo-tpot", type=float, default=0.1)
    p.add_argument("--filter", default="", help="key=value,... on the CSV columns")
    p.add_argument("--what", default="all", help="all | sweep | capacity | aligned | latency | compact")
    a = p.parse_args()
    if a.what == "aligned":
        return aligned(a.csv, a.slo_ttft, a.slo_tpot, a.filter)
    if a.what == "compact":
        return compact(a.csv, a.filter)
    if a.what == "latency":
        return aligned_latency(a.csv, a.slo_ttft, a.slo_tpot, a.filter)
    for key, rs, by, rates, seeds in load_groups(a.csv, a.filter):
        wl, n, scale, pool, commit = key
        print(f"\n### {wl}, {n} sessions, tool/think x{scale}, pool {pool} GiB, "
              f"commit at {'prefill end' if commit == '1' else 'finish'}")
        ok = lambda r: meets_slo(r, a.slo_ttft, a.slo_tpot)
        # capacity per system per seed
        if a.what in ("all", "capacity"):
            print(f"\ncapacity at SLO (mean TTFT <= {a.slo_ttft} s, TPOT <= {a.slo_tpot*1e3:.0f} ms), per seed "
                  + " / ".join(seeds))
            print("| system | " + " | ".join(f"seed {s}" for s in seeds) + " | mean |")
            print("|---|" + "---|" * (len(seeds) + 1))
            allcaps = {}
            for sys_, pins in SYSTEMS:
                caps = []
                for s in seeds:
                    best = 0.0
                    for rate in rates:
                        r = by.get((sys_, pins, rate, s))
                        if r is None:
                            continue
                        if not ok(r):
                            break
                        best = rate
                    caps.append(best)
                if any((sys_, pins, rate, s) in by for rate in rates for s in seeds):
                    allcaps[label(sys_, pins)] = caps
                    print(f"| {label(sys_, pins)} | " + " | ".join(f"{c:.4g}" for c in caps)
                          + f" | {statistics.mean(caps):.4g} |")
            base = [k for k in ("vllm", "pensieve", "vllm+pins") if k in allcaps]
            for ours in ("asymcache", "asymcache+pins"):
                if ours not in allcaps or not base:
                    continue
                cells = []
                for i in range(len(seeds)):
                    b = max(allcaps[k][i] for k in base)
                    cells.append(f"{allcaps[ours][i] / b - 1:+.0%}" if b > 0 else "-")
                print(f"| {ours} vs best of {'/'.join(base)} | " + " | ".join(cells) + " | |")
        if a.what in ("all", "sweep"):
            print("\n| rate | system | job s mean (min..max) | TTFT s mean (min..max) | TPOT ms | hit % | "
                  "rebuilt Mtok | new Mtok |")
            print("|---|---|---|---|---|---|---|---|")
            for rate in rates:
                for sys_, pins in SYSTEMS:
                    rr = [by[(sys_, pins, rate, s)] for s in seeds if (sys_, pins, rate, s) in by]
                    if not rr:
                        continue
                    f = lambda k: [float(r[k]) for r in rr if r[k] != ""]
                    j, t, tp, h = f("job_mean"), f("ttft_mean"), f("tpot_mean"), f("hit")
                    js = (f"{statistics.mean(j):.1f} ({min(j):.1f}..{max(j):.1f})" if j else "-")
                    print(f"| {rate:.4g} | {label(sys_, pins)} | {js} | {statistics.mean(t):.2f} "
                          f"({min(t):.2f}..{max(t):.2f}) | {statistics.mean(tp)*1e3:.1f} | "
                          f"{statistics.mean(h)*100:.1f} | {statistics.mean(f('rebuilt'))/1e6:.2f} | "
                          f"{statistics.mean(f('new_tokens'))/1e6:.2f} |")
                # the ratio per seed
                per = []
                for s in seeds:
                    x, y = by.get(("asymcache", "on", rate, s)), by.get(("vllm", "on", rate, s))
                    if x and y and x["job_mean"] and y["job_mean"]:
                        per.append(float(x["job_mean"]) / float(y["job_mean"]) - 1)
                if per:
                    mx = [by[("asymcache", "on", rate, s)] for s in seeds]
                    my = [by[("vllm", "on", rate, s)] for s in seeds]
                    pooled = (statistics.mean(float(r["job_mean"]) for r in mx)
                              / statistics.mean(float(r["job_mean"]) for r in my) - 1)
                    print(f"| {rate:.4g} | **asymcache+pins vs vllm+pins job** | per seed "
                          + ", ".join(f"{v*100:+.0f}%" for v in per)
                          + f"; of the means {pooled*100:+.1f}% | | | | | |")



def aligned(path, slo_ttft=2.0, slo_tpot=0.1, filt=""):
    """Per seed, rates relative to vllm's saturation (its first swept rate missing the SLO, pins
    off): the job-latency change of asymcache+pins vs vllm+pins and of asymcache vs vllm at the
    last rate vllm meets it (k=-1), at saturation (k=0) and the next swept rates."""
    for key, rs, by, rates, seeds in load_groups(path, filt):
        print(f"\n{key}: per seed, k = swept rates past vllm's saturation")
        print("| k | " + " | ".join(f"seed {s}: rate, +pins job, job, hit vllm+pins/asym+pins" for s in seeds) + " |")
        for k in (-1, 0, 1, 2):
            cells = []
            for s in seeds:
                sat = vllm_saturation(by, rates, s, slo_ttft, slo_tpot)
                if sat is None or not 0 <= sat + k < len(rates):
                    cells.append("-")
                    continue
                rate = rates[sat + k]
                a, b = by.get(("asymcache", "on", rate, s)), by.get(("vllm", "on", rate, s))
                c, d = by.get(("asymcache", "off", rate, s)), by.get(("vllm", "off", rate, s))
                if not (a and b and c and d):
                    cells.append("-")
                    continue
                cells.append(f"{rate:g}: {float(a['job_mean'])/float(b['job_mean'])-1:+.0%}, "
                             f"{float(c['job_mean'])/float(d['job_mean'])-1:+.0%}, "
                             f"{float(b['hit'])*100:.0f}/{float(a['hit'])*100:.0f}")
            print(f"| {k} | " + " | ".join(cells) + " |")



def aligned_latency(path, slo_ttft=2.0, slo_tpot=0.1, filt=""):
    """Per seed, at vllm's last SLO-meeting rate (k=-1), its saturation (k=0) and the next swept
    rate: mean TTFT and TPOT of vllm and pensieve over asymcache's (pins off; > 1 = asymcache
    better), the issue's goals being >= 2.0x / 1.7x over vllm and >= 1.2x over pensieve."""
    for key, rs, by, rates, seeds in load_groups(path, filt):
        print(f"\n{key}: rate: TTFT vllm/asym, pensieve/asym; TPOT vllm/asym, pensieve/asym")
        print("| k | " + " | ".join(f"seed {s}" for s in seeds) + " |")
        print("|---|" + "---|" * len(seeds))
        for k in (-1, 0, 1):
            cells = []
            for s in seeds:
                sat = vllm_saturation(by, rates, s, slo_ttft, slo_tpot)
                if sat is None or not 0 <= sat + k < len(rates):
                    cells.append("-")
                    continue
                rate = rates[sat + k]
                v, p, a = (by.get((n, "off", rate, s)) for n in ("vllm", "pensieve", "asymcache"))
                if not (v and p and a):
                    cells.append("-")
                    continue
                f = lambda x, y, m: float(x[m]) / float(y[m])
                cells.append(f"{rate:g}: {f(v, a, 'ttft_mean'):.2f}x, {f(p, a, 'ttft_mean'):.2f}x; "
                             f"{f(v, a, 'tpot_mean'):.2f}x, {f(p, a, 'tpot_mean'):.2f}x")
            print(f"| {k} | " + " | ".join(cells) + " |")



def compact(path, filt=""):
    """One line per rate, means over seeds: job latency of the five systems, the per-seed
    asymcache+pins vs vllm+pins change, and TTFT / TPOT / hit of the two pinned systems."""
    for key, rs, by, rates, seeds in load_groups(path, filt):
        print(f"\n{key}")
        print("| rate | job s: vllm / pensieve / asymcache / vllm+pins / asymcache+pins | "
              "asymcache+pins vs vllm+pins, per seed | TTFT s (+pins: vllm / asym) | "
              "TPOT ms | hit % |")
        print("|---|---|---|---|---|---|")
        for rate in rates:
            def m(sys_, pins, col, scale=1.0):
                v = [float(by[(sys_, pins, rate, s)][col]) for s in seeds
                     if (sys_, pins, rate, s) in by]
                return statistics.mean(v) * scale if len(v) == len(seeds) else float("nan")
            jobs = " / ".join(f"{m(a, b, 'job_mean'):.0f}" for a, b in SYSTEMS)
            per = []
            for s in seeds:
                x, y = by.get(("asymcache", "on", rate, s)), by.get(("vllm", "on", rate, s))
                per.append(f"{float(x['job_mean'])/float(y['job_mean'])-1:+.0%}" if x and y else "-")
            print(f"| {rate:g} | {jobs} | {', '.join(per)} | "
                  f"{m('vllm', 'on', 'ttft_mean'):.1f} / {m('asymcache', 'on', 'ttft_mean'):.1f} | "
                  f"{m('vllm', 'on', 'tpot_mean', 1e3):.0f} / {m('asymcache', 'on', 'tpot_mean', 1e3):.0f} | "
                  f"{m('vllm', 'on', 'hit', 100):.0f} / {m('asymcache', 'on', 'hit', 100):.0f} |")


if __name__ == "__main__":
    main()
