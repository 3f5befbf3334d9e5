#!/usr/bin/env python3
"""Where an agent job's time goes, from asymcache-sim --requests-csv: per system the mean per job
of queueing (admission - arrival), prefill (first token - admission), decode (finish - first
token) and tool time (next step's arrival - this step's finish), which add up to the job latency;
the prompt tokens hit / rebuilt / new; and the run's memory-blocked time (#steps lines).

usage: jobsplit.py REQUESTS.csv [LABEL]"""
import collections, csv, sys


def main():
    path = sys.argv[1]
    label = sys.argv[2] if len(sys.argv) > 2 else ""
    rows = collections.defaultdict(list)
    steps = {}
    with open(path) as f:
        lines = f.read().splitlines()
    header = lines[0].split(",")
    for line in lines[1:]:
        if line.startswith("#steps"):
            p = line.split(",")
            steps[p[1]] = dict(zip(p[2::2], p[3::2]))
            continue
        rows[line.split(",")[0]].append(dict(zip(header, line.split(","))))
    print(f"| {label} system | job s | queue s | prefill s | decode s | tool s | hit % | "
          f"rebuilt Mtok | new Mtok | mem-blocked % of run |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for system, rs in rows.items():
        jobs = collections.defaultdict(list)
        for r in rs:
            jobs[int(r["session"])].append(r)
        q = p = d = t = tot = 0.0
        for steps_ in jobs.values():
            steps_.sort(key=lambda r: int(r["step"]))
            for i, r in enumerate(steps_):
                q += float(r["queue_s"]); p += float(r["prefill_s"])
                d += float(r["finish_s"]) - float(r["first_token_s"])
                if i + 1 < len(steps_):
                    t += float(steps_[i + 1]["arrival_s"]) - float(r["finish_s"])
            tot += float(steps_[-1]["finish_s"]) - float(steps_[0]["arrival_s"])
        n = len(jobs)
        prompt = sum(int(r["prompt_tokens"]) for r in rs)
        hit = sum(int(r["hit_tokens"]) for r in rs)
        reb = sum(int(r["rebuild_tokens"]) for r in rs)
        new = sum(int(r["new_tokens"]) for r in rs)
        s = steps.get(system, {})
        mb = (100 * float(s["memory_blocked_s"]) / float(s["makespan_s"])) if s else float("nan")
        print(f"| {system} | {tot/n:.1f} | {q/n:.1f} | {p/n:.1f} | {d/n:.1f} | {t/n:.1f} | "
              f"{100*hit/prompt:.1f} | {reb/1e6:.2f} | {new/1e6:.2f} | {mb:.0f} |")


if __name__ == "__main__":
    main()
