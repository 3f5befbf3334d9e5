#!/usr/bin/env python3
"""Turns the GPU benchmark outputs into the cost-model calibration and the results page.

Inputs (either may be missing; what is missing is said in the outputs):
  --msa   msa_gpu.jsonl from msa_gpu_bench (one JSON object per line)
  --sdpa  sdpa.json from sdpa_baseline.py
Outputs:
  --out-json  calibration file, schema "asymcache.calibration.v1"
              (docs/calibration.md; cachecore/cost_model.h):
                linear_step_s       the cuBLAS sweep of one Llama-3-8B step;
                attention.flops_per_s     median TFLOP/s of MSA's large rebuild
                                          chunks (>= 1024 query tokens);
                attention.kv_bytes_per_s  median KV-read bandwidth of MSA decode at
                                          B >= 32, context >= 4k, 1 segment;
                attention.segment_overhead_s  least-squares slope of MSA time
                                          (one layer) over query segments (qseg
                                          sweep), clamped at 0;
                step_overhead_s     host wall time of one near-empty step graph;
                attention.num_sms   the SMs msa_gpu_bench ran on (its meta record's
                                    sm_count): the cost model's launch model.
              When MSA numbers are missing, the attention rates come from the
              SDPA-flash B0 baseline and "_attention_source" says so.
  --out-md    the results page (docs/results/msa_h100.md): MSA vs B0 vs B1
              tables and the issue-3 targets with pass/fail.
Only the standard library is used.
"""

import argparse
import datetime
import json
import os
import statistics
import sys

MODEL = {
    "name": "llama-3-8b",
    "num_layers": 32,
    "num_q_heads": 32,
    "num_kv_heads": 8,
    "head_dim": 128,
    "dtype_bytes": 2,
    "block_tokens": 16,
}
# "A small fraction" (issue 3, packed 16-token rebuild at 8k): our reading. Packing
# cannot make the rebuild's own FLOPs free, so the least it can add is the time of
# those FLOPs at the kernel's full-tile attention rate (the calibration's
# flops_per_s); standalone, 16 queries run latency-bound far below that rate. The
# verdict passes when the marginal cost is within PACKED_FLOOR_SLACK of that floor;
# the fraction of the standalone time is reported beside it. (Until 2026-11-27 the
# verdict was a fixed 25% of standalone, which is below the floor on an H100:
# 16 x 8k queries' FLOPs at 319 TFLOP/s take 6.7 us, 32% of the 21 us standalone.)
PACKED_FLOOR_SLACK = 1.25


def load_msa(path):
    meta, recs = {}, []
    if not path or not os.path.exists(path):
        return meta, recs
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                continue  # a truncated last line (killed run)
            if obj.get("kind") == "meta":
                meta = obj
            else:
                recs.append(obj)
    return meta, recs


def load_sdpa(path):
    if not path or not os.path.exists(path):
        return {}
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError:
        return {}


def ok(rec):
    return "error" not in rec and rec.get("median_us") is not None


def find(recs, **keys):
    for r in recs:
        if ok(r) and all(r.get(k) == v for k, v in keys.items()):
            return r
    return None


def us(rec):
    return rec["median_us"] if rec else None


def fmt(x, spec=".1f"):
    return "—" if x is None else format(x, spec)


def ratio(a, b):
    return None if a is None or b is None or b == 0 else a / b


def slope(points):
    """Least-squares slope of y over x."""
    if len(points) < 2:
        return None
    mx = statistics.mean(p[0] for p in points)
    my = statistics.mean(p[1] for p in points)
    den = sum((p[0] - mx) ** 2 for p in points)
    if den == 0:
        return None
    return sum((p[0] - mx) * (p[1] - my) for p in points) / den


def calibrate(msa, sdpa):
    notes = []
    # Attention compute rate.
    big = [r for r in msa if ok(r) and r["kind"] == "rebuild" and not r.get("cold_l2")
           and r["q_tokens"] >= 1024 and r.get("nonfinite_outputs", 0) == 0]
    sd_att = [r for r in sdpa.get("attention", []) if ok(r)]
    if big:
        flops_per_s = statistics.median(r["tflops"] for r in big) * 1e12
        notes.append(f"flops_per_s: median of {len(big)} MSA rebuild chunks of >= 1024 tokens")
        att_source = "MSA"
    else:
        b0 = [r for r in sd_att if r["kind"] == "rebuild" and r["variant"] == "B0"
              and not r.get("cold_l2") and r["q_tokens"] >= 1024]
        flops_per_s = statistics.median(r["tflops"] for r in b0) * 1e12 if b0 else None
        notes.append("flops_per_s: MSA numbers missing; SDPA-flash B0 rebuild chunks used")
        att_source = "SDPA-flash B0 (MSA missing)"
    # KV scan bandwidth.
    dec = [r for r in msa if ok(r) and r["kind"] == "decode" and not r.get("cold_l2")
           and r["batch"] >= 32 and r["context"] >= 4096 and r["segments"] == 1
           and r.get("nonfinite_outputs", 0) == 0]
    if dec:
        kv_bytes_per_s = statistics.median(r["kv_read_gb_per_s"] for r in dec) * 1e9
        notes.append(f"kv_bytes_per_s: median of {len(dec)} MSA decode configs (B >= 32, ctx >= 4k, 1 segment)")
    else:
        b0 = [r for r in sd_att if r["kind"] == "decode" and r["variant"] == "B0"
              and not r.get("cold_l2") and r["batch"] >= 32 and r["context"] >= 4096]
        kv_bytes_per_s = statistics.median(r["kv_read_gb_per_s"] for r in b0) * 1e9 if b0 else None
        notes.append("kv_bytes_per_s: MSA numbers missing; SDPA-flash B0 decode used")
        att_source = "SDPA-flash B0 (MSA missing)"
    # Segment overhead: slope over query segments (same work, more runs).
    qseg = sorted((r["segments"], r["median_us"] * 1e-6) for r in msa
                  if ok(r) and r["kind"] == "qseg")
    seg_slope = slope(qseg)
    if seg_slope is not None:
        segment_overhead_s = max(0.0, seg_slope)
        notes.append(f"segment_overhead_s: slope {seg_slope * 1e6:.3f} us/segment over "
                     f"query segments {[p[0] for p in qseg]} (clamped at 0)")
    else:
        segment_overhead_s = 0.0
        notes.append("segment_overhead_s: NOT MEASURED (no MSA query-segment sweep); 0 written")
    # Step overhead and linear layers.
    so = sdpa.get("step_overhead")
    step_overhead_s = so["median_us"] * 1e-6 if so else None
    lin = sorted((int(r["tokens"]), float(r["seconds"])) for r in sdpa.get("linear_step", []))
    # The cost model requires step time non-decreasing in tokens; measured points of a
    # weight-bound step (1..64 tokens) can dip by noise: take the running maximum.
    raised = []
    for i in range(1, len(lin)):
        if lin[i][1] < lin[i - 1][1]:
            raised.append(lin[i][0])
            lin[i] = (lin[i][0], lin[i - 1][1])
    if raised:
        notes.append(f"linear_step_s: points at {raised} tokens measured below the previous point "
                     "(noise) were raised to it (running maximum)")
    return {
        "flops_per_s": flops_per_s,
        "kv_bytes_per_s": kv_bytes_per_s,
        "segment_overhead_s": segment_overhead_s,
        "step_overhead_s": step_overhead_s,
        "linear_step_s": lin,
        "attention_source": att_source,
        "notes": notes,
    }


def write_calibration(path, cal, device, source):
    missing = [k for k in ("flops_per_s", "kv_bytes_per_s", "segment_overhead_s", "step_overhead_s")
               if cal[k] is None]
    if not cal["linear_step_s"]:
        missing.append("linear_step_s")
    if missing:
        print(f"[make_calibration] cannot write {path}: missing {missing}", file=sys.stderr)
        return False
    doc = {
        "schema": "asymcache.calibration.v1",
        "device": device,
        "source": source,
        "model": MODEL,
        "linear_step_s": [[t, s] for t, s in cal["linear_step_s"]],
        "attention": {
            "flops_per_s": cal["flops_per_s"],
            "kv_bytes_per_s": cal["kv_bytes_per_s"],
            "segment_overhead_s": cal["segment_overhead_s"],
        },
        "step_overhead_s": cal["step_overhead_s"],
        "_attention_source": cal["attention_source"],
        "_notes": cal["notes"],
    }
    if cal.get("num_sms"):
        doc["attention"]["num_sms"] = int(cal["num_sms"])
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(doc, f, indent=2)
        f.write("\n")
    return True


def verdict(flag):
    return "—" if flag is None else ("**PASS**" if flag else "**FAIL**")


def markdown(msa_meta, msa, sdpa, cal, device, date, command, wrote, inputs=None):
    sd_meta = sdpa.get("meta", {})
    sd = [r for r in sdpa.get("attention", []) if ok(r)]
    L = []
    L.append(f"# MSA on {device}: results\n")
    L.append(f"- card: **{device}** ({msa_meta.get('sm_count', sd_meta.get('sm_count', '?'))} SMs); "
             f"date (UTC): {date}")
    L.append(f"- command: `{command}` (on the lent GPU machine; see bench/gpu/README.md)")
    L.append(f"- software: PyTorch {sd_meta.get('torch', '?')} (CUDA {sd_meta.get('cuda', '?')}), "
             f"CUDA runtime {msa_meta.get('cuda_runtime', '?')}, driver API {msa_meta.get('cuda_driver', '?')}; "
             f"GQA in SDPA: {sd_meta.get('gqa', '?')}; lower-right causal on flash: "
             f"{sd_meta.get('lower_right_causal_on_flash', '?')}; flash impls: {sd_meta.get('flash_attention_impls', 'n/a')}")
    if inputs:
        L.append(f"- raw outputs: {', '.join(f'`{x}`' for x in inputs)}")
    L.append("- shape: Llama-3-8B attention (32 q heads, 8 kv heads, head dim 128), bf16, pages of 16 "
             "tokens randomly permuted in a pool; one layer per call. Times are medians per call of "
             "CUDA-graph replays (>= 20 warm-up, >= 100 timed; p10/p90 in the JSON); warm L2 unless marked cold.")
    if not msa:
        L.append("\n**MSA numbers are missing from this run** (kernel not built or failed); "
                 "only the baselines and ceilings below were measured.")
    L.append("")
    # Ceilings.
    copy = find(msa, kind="copy")
    L.append("## Ceilings\n")
    L.append("| what | value |")
    L.append("|---|---|")
    if copy:
        L.append(f"| device copy 2 GiB (msa_gpu_bench), read+write | {copy['gb_per_s']:.0f} GB/s |")
    if sdpa.get("copy"):
        L.append(f"| device copy 4 GiB (torch), read+write | {sdpa['copy']['gb_per_s']:.0f} GB/s |")
    if sdpa.get("gemm"):
        L.append(f"| bf16 GEMM 8192³ (torch.matmul) | {sdpa['gemm']['tflops']:.0f} TFLOP/s |")
    if sdpa.get("step_overhead"):
        so = sdpa["step_overhead"]
        L.append(f"| empty step: graph of {so['kernels']} tiny kernels + sync (host wall) | "
                 f"{so['median_us']:.1f} µs |")
    L.append("")

    # Decode.
    segs = [1, 4, 16, 64, 256]
    combos = sorted({(r["batch"], r["context"]) for r in msa + sd
                     if ok(r) and r.get("kind") == "decode"})
    if combos:
        L.append("## Decode (1 query token per sequence, whole context visible)\n")
        L.append("MSA columns: context split into S segments (random lengths, random position holes, "
                 "each segment starting on a new page). B0/B1 do not depend on S.\n")
        L.append("| B | ctx | MSA S=1 µs | S=4 | S=16 | S=64 | S=256 | MSA S=1 GB/s | B0 µs | B0 GB/s | "
                 "B1 gather µs | B1 total µs | MSA(S=1)/B0 | B1/MSA(S=64) |")
        L.append("|" + "---|" * 14)
        for b, n in combos:
            m = {s: find(msa, kind="decode", batch=b, context=n, segments=s, cold_l2=False) for s in segs}
            b0 = find(sd, kind="decode", batch=b, context=n, variant="B0", cold_l2=False)
            g = find(sd, kind="decode", batch=b, context=n, variant="B1_gather", cold_l2=False)
            t = find(sd, kind="decode", batch=b, context=n, variant="B1_total", cold_l2=False)
            m1 = m[1]
            L.append(f"| {b} | {n // 1024}k | " + " | ".join(fmt(us(m[s])) for s in segs) +
                     f" | {fmt(m1['kv_read_gb_per_s'] if m1 else None, '.0f')} | {fmt(us(b0))} | "
                     f"{fmt(b0['kv_read_gb_per_s'] if b0 else None, '.0f')} | {fmt(us(g))} | {fmt(us(t))} | "
                     f"{fmt(ratio(us(m1), us(b0)), '.2f')} | {fmt(ratio(us(t), us(m[64])), '.2f')} |")
        L.append("")
    # Rebuild.
    rb = sorted({(r["q_tokens"], r["pos"]) for r in msa + sd if ok(r) and r.get("kind") == "rebuild"},
                key=lambda x: (x[1], x[0]))
    if rb:
        L.append("## Rebuild / prefill chunk (q tokens at positions pos.., lower-right causal, 1 sequence)\n")
        L.append("| q tokens | pos | MSA µs | MSA TFLOP/s | B0 µs | B0 TFLOP/s | B1 gather µs | B1 total µs | MSA/B0 | B1/MSA |")
        L.append("|" + "---|" * 10)
        for c, p in rb:
            m = find(msa, kind="rebuild", q_tokens=c, pos=p, cold_l2=False)
            b0 = find(sd, kind="rebuild", q_tokens=c, pos=p, variant="B0", cold_l2=False)
            g = find(sd, kind="rebuild", q_tokens=c, pos=p, variant="B1_gather", cold_l2=False)
            t = find(sd, kind="rebuild", q_tokens=c, pos=p, variant="B1_total", cold_l2=False)
            L.append(f"| {c} | {p} | {fmt(us(m))} | {fmt(m['tflops'] if m else None, '.0f')} | {fmt(us(b0))} | "
                     f"{fmt(b0['tflops'] if b0 else None, '.0f')} | {fmt(us(g))} | {fmt(us(t))} | "
                     f"{fmt(ratio(us(m), us(b0)), '.2f')} | {fmt(ratio(us(t), us(m)), '.2f')} |")
        L.append("")
    # Cold L2.
    cold_m = [r for r in msa if ok(r) and r.get("cold_l2") and r["kind"] in ("decode", "rebuild")]
    cold_s = [r for r in sd if r.get("cold_l2")]
    if cold_m or cold_s:
        L.append("## Cold L2 (256 MiB written before each call; per-call events, no graph batching)\n")
        L.append("| config | MSA µs | B0 µs | B1 total µs |")
        L.append("|---|---|---|---|")
        keys = sorted({(r["kind"], r["batch"], r["context"] if r["kind"] == "decode" else r["pos"],
                        r.get("q_tokens", 1)) for r in cold_m + cold_s})
        for kind, b, x, q in keys:
            if kind == "decode":
                sel = dict(kind=kind, batch=b, context=x, cold_l2=True)
                label = f"decode B={b} ctx={x // 1024}k"
                ms = [r for r in cold_m if all(r.get(k) == v for k, v in sel.items())]
                mtxt = ", ".join(f"S={r['segments']}: {r['median_us']:.1f}" for r in ms) or "—"
            else:
                sel = dict(kind=kind, q_tokens=q, pos=x, cold_l2=True)
                label = f"rebuild {q} tokens at {x}"
                mtxt = fmt(us(find(cold_m, **sel)))
            b0 = find(cold_s, variant="B0", **sel)
            t = find(cold_s, variant="B1_total", **sel)
            L.append(f"| {label} | {mtxt} | {fmt(us(b0))} | {fmt(us(t))} |")
        L.append("")
    # B0 again with PyTorch's FA3 flash implementation activated (informational).
    fa = [r for r in sd if r.get("variant") == "B0_FA3"]
    if fa or sd_meta.get("fa3"):
        L.append("## B0 with FA3 activated (informational; the default flash impl above is the B0 of the targets)\n")
        L.append(f"{sd_meta.get('fa3', '')}\n")
        if fa:
            L.append("| config | MSA µs | B0 default µs | B0 FA3 µs | FA3 TFLOP/s or GB/s |")
            L.append("|---|---|---|---|---|")
            for r in fa:
                if r["kind"] == "decode":
                    sel = dict(kind="decode", batch=r["batch"], context=r["context"], cold_l2=False)
                    label = f"decode B={r['batch']} ctx={r['context'] // 1024}k"
                    mm = find(msa, segments=1, **sel)
                    rate = f"{r['kv_read_gb_per_s']:.0f} GB/s"
                else:
                    sel = dict(kind="rebuild", q_tokens=r["q_tokens"], pos=r["pos"], cold_l2=False)
                    label = f"rebuild {r['q_tokens']} tokens at {r['pos']}"
                    mm = find(msa, **sel)
                    rate = f"{r['tflops']:.0f} TFLOP/s"
                b0 = find(sd, variant="B0", **sel)
                L.append(f"| {label} | {fmt(us(mm))} | {fmt(us(b0))} | {r['median_us']:.1f} | {rate} |")
        L.append("")
    # Query segments, packed, mixed.
    qs = sorted([r for r in msa if ok(r) and r["kind"] == "qseg"], key=lambda r: r["segments"])
    if qs:
        L.append("## Query segments (512 query tokens at the end of a 16k context, in S runs)\n")
        L.append("| S | MSA µs | TFLOP/s |")
        L.append("|---|---|---|")
        for r in qs:
            L.append(f"| {r['segments']} | {r['median_us']:.1f} | {r['tflops']:.0f} |")
        L.append(f"\nSegment overhead (least-squares slope, one layer): "
                 f"{fmt(cal['segment_overhead_s'] * 1e6 if cal['segment_overhead_s'] is not None else None, '.3f')} µs per extra segment.\n")
    pk = {r.get("variant"): r for r in msa if ok(r) and r["kind"] == "packed"}
    if pk:
        L.append("## Packed 16-token rebuild at 8k (16k context)\n")
        L.append("| case | query segments | q tokens | MSA µs |")
        L.append("|---|---|---|---|")
        for v in ("alone", "without", "with"):
            if v in pk:
                L.append(f"| {v} | {pk[v]['segments']} | {pk[v]['q_tokens']} | {pk[v]['median_us']:.1f} |")
        L.append("")
    mx = {r.get("variant"): r for r in msa if ok(r) and r["kind"] == "mixed"}
    if mx:
        L.append("## Mixed batch (decode B=32 @16k + 512-token chunk at 8k + 4 × 16-token holes at 8k of 16k)\n")
        L.append("| part | sequences | q tokens | MSA µs |")
        L.append("|---|---|---|---|")
        for v in ("decode_only", "chunk_only", "holes_only", "mixed"):
            if v in mx:
                L.append(f"| {v} | {mx[v]['batch']} | {mx[v]['q_tokens']} | {mx[v]['median_us']:.1f} |")
        parts = [mx.get(v) for v in ("decode_only", "chunk_only", "holes_only")]
        if all(parts) and "mixed" in mx:
            L.append(f"\nSum of the parts {sum(p['median_us'] for p in parts):.1f} µs vs one mixed launch "
                     f"{mx['mixed']['median_us']:.1f} µs.\n")
        L.append("")

    # Plan time.
    picks = []
    for b in (1, 8, 32, 128):
        for sg in (1, 256):
            picks.append((f"decode B={b} 16k S={sg}", find(msa, kind="decode", batch=b, context=16384,
                                                            segments=sg, cold_l2=False)))
    picks.append(("rebuild 4096 tokens at 32768", find(msa, kind="rebuild", q_tokens=4096, pos=32768,
                                                        cold_l2=False)))
    picks.append(("mixed batch", find(msa, kind="mixed", variant="mixed")))
    picks = [(label, r) for label, r in picks if r and r.get("plan_us") is not None]
    if picks:
        L.append("## CPU plan time (PlanMsa on the GPU machine's CPU, median of 5; one plan serves all 32 layers)\n")
        L.append("| batch | plan µs | per layer (÷32) µs | MSA µs (one layer) |")
        L.append("|---|---|---|---|")
        for label, r in picks:
            L.append(f"| {label} | {r['plan_us']:.0f} | {r['plan_us'] / 32:.1f} | {r['median_us']:.1f} |")
        L.append("")
    # Targets.
    L.append("## Issue 3 targets\n")
    L.append("| target | measured | verdict |")
    L.append("|---|---|---|")
    b0 = find(sd, kind="decode", batch=32, context=16384, variant="B0", cold_l2=False)
    b1 = find(sd, kind="decode", batch=32, context=16384, variant="B1_total", cold_l2=False)
    m = {s: find(msa, kind="decode", batch=32, context=16384, segments=s, cold_l2=False) for s in (1, 4, 16, 64)}
    if all(m.values()) and b0:
        worst = max(us(x) for x in m.values())
        txt = ", ".join(f"S={s}: {us(x):.1f} µs ({x['kv_read_gb_per_s']:.0f} GB/s)" for s, x in m.items())
        L.append(f"| decode B=32, 16k, 1–64 segments ≤ B0 | {txt}; B0 {us(b0):.1f} µs "
                 f"({b0['kv_read_gb_per_s']:.0f} GB/s) | {verdict(worst <= us(b0))} |")
        best_gbs = m[1]["kv_read_gb_per_s"]
        L.append(f"| goal: 3.0 TB/s KV reads at B=32 16k | S=1: {best_gbs:.0f} GB/s | {verdict(best_gbs >= 3000)} |")
    else:
        L.append("| decode B=32, 16k, 1–64 segments ≤ B0 | missing measurement | — |")
    c = find(msa, kind="rebuild", q_tokens=512, pos=8192, cold_l2=False)
    cb0 = find(sd, kind="rebuild", q_tokens=512, pos=8192, variant="B0", cold_l2=False)
    if c and cb0:
        L.append(f"| 512-token chunk at 8k ≤ B0 | MSA {us(c):.1f} µs ({c['tflops']:.0f} TFLOP/s), "
                 f"B0 {us(cb0):.1f} µs ({cb0['tflops']:.0f} TFLOP/s) | {verdict(us(c) <= us(cb0))} |")
    else:
        L.append("| 512-token chunk at 8k ≤ B0 | missing measurement | — |")
    if m.get(1) and m.get(64):
        r = us(m[64]) / us(m[1])
        L.append(f"| 64 segments within 10% of 1 segment (B=32, 16k) | {us(m[64]):.1f} vs {us(m[1]):.1f} µs "
                 f"(×{r:.3f}) | {verdict(r <= 1.10)} |")
        worst_all = []
        for b, n in combos:
            a = find(msa, kind="decode", batch=b, context=n, segments=1, cold_l2=False)
            z = find(msa, kind="decode", batch=b, context=n, segments=64, cold_l2=False)
            if a and z:
                worst_all.append((us(z) / us(a), b, n))
        if worst_all:
            w = max(worst_all)
            L.append(f"| … same over every decode B × ctx | worst ×{w[0]:.3f} at B={w[1]}, {w[2] // 1024}k | "
                     f"{verdict(w[0] <= 1.10)} |")
        if b1:
            s = us(b1) / us(m[64])
            L.append(f"| 64 segments ≥ 2× faster than B1 end to end (B=32, 16k) | B1 {us(b1):.1f} µs / MSA "
                     f"{us(m[64]):.1f} µs = ×{s:.2f} | {verdict(s >= 2.0)} |")
    else:
        L.append("| 64 segments within 10% of 1 segment | missing measurement | — |")
    if all(v in pk for v in ("alone", "without", "with")):
        marg = us(pk["with"]) - us(pk["without"])
        frac = marg / us(pk["alone"])
        rate = cal.get("flops_per_s")
        floor = pk["alone"]["flops"] / rate * 1e6 if rate else None
        floor_text = (f"; its FLOPs at the calibrated {rate / 1e12:.0f} TFLOP/s take {floor:.1f} µs "
                      f"(marginal = ×{marg / floor:.2f} of that floor)" if floor else "; no attention rate")
        L.append(f"| packed 16-token rebuild at 8k: small fraction of standalone (marginal ≤ "
                 f"×{PACKED_FLOOR_SLACK:.2f} its FLOPs at the full-tile rate, our reading) | "
                 f"marginal {marg:.1f} µs (with {us(pk['with']):.1f} − without {us(pk['without']):.1f}) vs "
                 f"alone {us(pk['alone']):.1f} µs = {frac:.0%}{floor_text} | "
                 f"{verdict(floor is not None and marg <= PACKED_FLOOR_SLACK * floor) if floor else '—'} |")
    else:
        L.append("| packed 16-token rebuild vs standalone | missing measurement | — |")
    L.append("")
    # Calibration.
    L.append("## Calibration " + ("written (calibration/h100-llama-3-8b.json)\n" if wrote
                                  else "NOT written (inputs missing)\n"))
    L.append(f"- attention source: {cal['attention_source']}")
    L.append(f"- flops_per_s = {fmt(cal['flops_per_s'] / 1e12 if cal['flops_per_s'] else None, '.0f')} TFLOP/s; "
             f"kv_bytes_per_s = {fmt(cal['kv_bytes_per_s'] / 1e9 if cal['kv_bytes_per_s'] else None, '.0f')} GB/s; "
             f"segment_overhead_s = {fmt(cal['segment_overhead_s'] * 1e6 if cal['segment_overhead_s'] is not None else None, '.3f')} µs; "
             f"step_overhead_s = {fmt(cal['step_overhead_s'] * 1e6 if cal['step_overhead_s'] else None, '.1f')} µs")
    for n in cal["notes"]:
        L.append(f"- {n}")
    if cal["linear_step_s"]:
        L.append("\n| tokens in step | linear ms | µs/token |")
        L.append("|---|---|---|")
        for t, s in cal["linear_step_s"]:
            L.append(f"| {t} | {s * 1e3:.2f} | {s * 1e6 / t:.1f} |")
    L.append("")
    return "\n".join(L)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--msa", default="msa_gpu.jsonl")
    ap.add_argument("--sdpa", default="sdpa.json")
    ap.add_argument("--out-json", required=True)
    ap.add_argument("--out-md", required=True)
    ap.add_argument("--command", default="bash scripts/gpu_run.sh")
    args = ap.parse_args()

    msa_meta, msa = load_msa(args.msa)
    sdpa = load_sdpa(args.sdpa)
    if not msa and not sdpa:
        print("[make_calibration] no input at all", file=sys.stderr)
        return 1
    device = sdpa.get("meta", {}).get("device") or msa_meta.get("device") or "unknown"
    date = sdpa.get("meta", {}).get("date_utc") or datetime.datetime.now(
        datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    cal = calibrate(msa, sdpa)
    # The MSA launch model of the cost model (attention.num_sms, docs/calibration.md
    # "Prefill waves"): the SMs msa_gpu_bench ran on.
    cal["num_sms"] = msa_meta.get("sm_count")
    source = f"{args.command} (msa_gpu_bench + sdpa_baseline.py + make_calibration.py), {date}"
    wrote = write_calibration(args.out_json, cal, device, source)
    md = markdown(msa_meta, msa, sdpa, cal, device, date, args.command, wrote,
                  [p for p in (args.msa, args.sdpa) if p and os.path.exists(p)])
    os.makedirs(os.path.dirname(os.path.abspath(args.out_md)), exist_ok=True)
    with open(args.out_md, "w") as f:
        f.write(md)
    print(md)
    return 0 if wrote else 1


if __name__ == "__main__":
    sys.exit(main())
