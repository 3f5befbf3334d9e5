#!/usr/bin/env python3
"""Which request computed which part of which shared document, from a worker step trace.

Usage: duplicate_prefill.py WORKLOAD.jsonl TRACE [TRACE...]

WORKLOAD.jsonl is the run's workload as a trace (`asymcache-sim --workload=W --requests=N
--seed=S --rate=R --dump_trace=FILE` regenerates what asymcache-bench replayed with the same
flags); TRACE a worker step trace (`--step-trace`, .gz allowed). A request of the trace is
matched to its workload step by its context length (the end of its last chunk: the step's
inputs plus every earlier output of its session). Prints, per trace, the document tokens
computed twice at overlapping times (a request computing positions of a shared document that
another request of the same document was computing then: the work the deferral of duplicate
prefill removes, docs/worker.md "Pressure"), and with --requests every matched request's
computed tokens, first and last chunk time (s) and document.
"""
import collections
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from step_trace_summary import read_trace  # noqa: E402


def read_workload(path):
    """Context length at each step -> (session, step, shared document or None, its length)."""
    by_length = {}
    context = collections.defaultdict(int)
    document = {}
    with open(path) as f:
        for n, line in enumerate(f, 1):
            try:
                step = json.loads(line)
                session, length = step["session"], context[step["session"]]
                for part in step["input"]:
                    length += part["len"]
                    if "shared" in part:
                        document[session] = (part["shared"], part["len"])
                context[session] = length + step["output_len"]
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise ValueError(f"{path}:{n}: not a workload trace step ({exc})") from None
            doc, doc_len = document.get(session, (None, 0))
            by_length[length] = (session, step["step"], doc, doc_len)
    return by_length


def requests(rows, by_length):
    """Per request id: its chunks, times and workload step (None when unmatched)."""
    out = {}
    for row in rows:
        for rid, begin, end in row["chunks"]:
            r = out.setdefault(rid, {"chunks": [], "first_s": row["t_ms"] / 1e3, "end": 0})
            r["chunks"].append((begin, end))
            r["last_s"] = row["t_ms"] / 1e3
            r["end"] = max(r["end"], end)
    for r in out.values():
        r["step"] = by_length.get(r["end"])
    return out


def duplicate_tokens(reqs):
    """Document tokens a request computed while an earlier request of the same document was
    computing the same positions (its prefill window overlapping the other's)."""
    by_doc = collections.defaultdict(list)
    for r in reqs.values():
        if r["step"] is not None and r["step"][2] is not None:
            by_doc[r["step"][2]].append(r)
    total = 0
    for readers in by_doc.values():
        readers.sort(key=lambda r: r["first_s"])
        for i, later in enumerate(readers):
            for earlier in readers[:i]:
                if later["first_s"] > earlier["last_s"]:
                    continue
                doc_len = later["step"][3]
                for a, b in later["chunks"]:
                    for c, d in earlier["chunks"]:
                        total += max(0, min(b, d, doc_len) - max(a, c))
    return total


def main(argv):
    show = "--requests" in argv
    args = [a for a in argv if a != "--requests"]
    if len(args) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        by_length = read_workload(args[0])
        for trace in args[1:]:
            reqs = requests(read_trace(trace), by_length)
            unmatched = sum(r["step"] is None for r in reqs.values())
            print(f"{trace}: {duplicate_tokens(reqs)} document tokens computed twice at "
                  f"overlapping times; {len(reqs)} requests, {unmatched} not matched to the workload")
            if show:
                for rid, r in sorted(reqs.items(), key=lambda kv: kv[1]["first_s"]):
                    session, step, doc, _ = r["step"] or ("?", "?", None, 0)
                    computed = sum(b - a for a, b in r["chunks"])
                    print(f"  request {rid}: {session} step {step} {doc or '-'}: {computed} tokens, "
                          f"{r['first_s']:.1f}-{r['last_s']:.1f} s")
    except (OSError, ValueError) as exc:
        print(f"duplicate_prefill: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
