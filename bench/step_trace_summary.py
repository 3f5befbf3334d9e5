#!/usr/bin/env python3
"""Where a worker's step time went: a summary of step traces (schema
asymcache.step_trace.v1, cachecore/step_trace.h): asymcache-worker's
(--step-trace / the bench's --step-traces; scripts/gpu_e2e_run.sh
STEP_TRACES=1) or the simulator's modeled ones (asymcache-sim
--step-trace-dir; there forward = step = predicted).

  step_trace_summary.py TRACE[.gz] [TRACE ...]
  step_trace_summary.py --outside TRACE[.gz] [TRACE ...]

One markdown row per trace: steps and busy time (step_ms summed), the forward's
share and the rest of the step (RPCs, planning), the cost model's prediction,
prefill/rebuild tokens computed with their mean absolute position and the
attention work they imply (query-key pairs of a causal chunk over all keys
before it: sum of (end^2 - begin^2) / 2 over chunks, so the same token count
deeper in a context costs more), chunk steps split by whether requests waited
for admission (`waiting`), and decode-only steps. --outside instead splits
each trace's time outside the forward (step_ms - forward_ms) by step kind
(decode only, mixed, prefill only), whether a request waited for admission,
and whether a decode of the step started a new page (its context - 1 is a
multiple of 16, the worker's page: a rollover). Exit 0; 2 on an unreadable
or malformed trace (the message names the file and line).
"""
import gzip
import json
import sys


def read_trace(path):
    opener = gzip.open if path.endswith(".gz") else open
    rows = []
    with opener(path, "rt") as f:
        for n, line in enumerate(f, 1):
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{n}: not JSON ({exc.msg})") from None
            if n == 1:
                if row.get("schema") != "asymcache.step_trace.v1":
                    raise ValueError(f"{path}:1: schema {row.get('schema')!r}, want asymcache.step_trace.v1")
                continue
            for key in ("t_ms", "chunks", "step_ms", "forward_ms", "predicted_ms", "waiting"):
                if key not in row:
                    raise ValueError(f"{path}:{n}: no '{key}'")
            rows.append(row)
    return rows


def summarize(rows):
    s = {"steps": len(rows), "busy_s": 0.0, "forward_s": 0.0, "predicted_s": 0.0, "tokens": 0,
         "position_sum": 0.0, "pairs": 0.0, "wait_steps": 0, "wait_tokens": 0, "wait_s": 0.0,
         "free_steps": 0, "free_tokens": 0, "free_s": 0.0, "decode_steps": 0, "decode_s": 0.0}
    for r in rows:
        s["busy_s"] += r["step_ms"] / 1e3
        s["forward_s"] += r["forward_ms"] / 1e3
        s["predicted_s"] += r["predicted_ms"] / 1e3
        tokens = 0
        for _, begin, end in r["chunks"]:
            tokens += end - begin
            s["position_sum"] += (end - begin) * (begin + end - 1) / 2
            s["pairs"] += (end * end - begin * begin) / 2
        s["tokens"] += tokens
        if not r["chunks"]:
            s["decode_steps"] += 1
            s["decode_s"] += r["step_ms"] / 1e3
        elif r["waiting"] > 0:
            s["wait_steps"] += 1
            s["wait_tokens"] += tokens
            s["wait_s"] += r["step_ms"] / 1e3
        else:
            s["free_steps"] += 1
            s["free_tokens"] += tokens
            s["free_s"] += r["step_ms"] / 1e3
    return s


def outside_split(rows, block_tokens=16):
    """{(kind, waiting, rollover): [steps, seconds outside the forward]}."""
    split = {}
    for r in rows:
        kind = "decode" if not r["chunks"] else ("prefill" if not r["decodes"] else "mixed")
        rollover = any((c - 1) % block_tokens == 0 for c in r["decodes"])
        cell = split.setdefault((kind, r["waiting"] > 0, rollover), [0, 0.0])
        cell[0] += 1
        cell[1] += (r["step_ms"] - r["forward_ms"]) / 1e3
    return split


def print_outside(name, split):
    print(f"\n{name}\n\n| steps | count | outside the forward | mean |\n|---|---:|---:|---:|")
    for (kind, waiting, rollover), (n, sec) in sorted(split.items()):
        label = (f"{kind}, {'waiting' if waiting else 'nobody waiting'}, "
                 f"{'rollover' if rollover else 'no rollover'}")
        print(f"| {label} | {n} | {sec:.2f} s | {sec / n * 1e3:.3f} ms |")


def row(name, s):
    per = lambda tok, n: f"{tok / n:.0f}" if n else "—"  # noqa: E731
    rate = lambda tok, sec: f"{tok / sec / 1e3:.1f}k" if sec else "—"  # noqa: E731
    return (f"| {name} | {s['steps']} | {s['busy_s']:.1f} | {s['forward_s']:.1f} | "
            f"{(s['busy_s'] - s['forward_s']) / max(s['steps'], 1) * 1e3:.2f} | {s['predicted_s']:.1f} | "
            f"{s['tokens'] / 1e6:.3f}M | {s['position_sum'] / max(s['tokens'], 1):.0f} | {s['pairs'] / 1e9:.1f}G | "
            f"{s['wait_steps']}: {per(s['wait_tokens'], s['wait_steps'])} tok, {rate(s['wait_tokens'], s['wait_s'])}/s | "
            f"{s['free_steps']}: {per(s['free_tokens'], s['free_steps'])} tok, {rate(s['free_tokens'], s['free_s'])}/s | "
            f"{s['decode_steps']}: {s['decode_s']:.1f} s |")


def main(argv):
    outside = len(argv) > 1 and argv[1] == "--outside"
    paths = argv[2:] if outside else argv[1:]
    if not paths:
        print(__doc__, file=sys.stderr)
        return 2
    if outside:
        for path in paths:
            try:
                print_outside(path, outside_split(read_trace(path)))
            except (OSError, ValueError) as exc:
                print(f"step_trace_summary: {exc}", file=sys.stderr)
                return 2
        return 0
    print("| trace | steps | busy s | forward s | rest ms/step | predicted s | prompt tokens computed | "
          "mean position | attention pairs | chunk steps, requests waiting | chunk steps, none waiting | "
          "decode-only steps |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for path in paths:
        try:
            s = summarize(read_trace(path))
        except (OSError, ValueError) as exc:
            print(f"step_trace_summary: {exc}", file=sys.stderr)
            return 2
        print(row(path.rsplit("/", 1)[-1].split(".steps")[0], s))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
