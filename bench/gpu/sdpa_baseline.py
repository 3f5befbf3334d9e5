#!/usr/bin/env python3
"""PyTorch baselines for the MSA benchmark (issue 3, MSA_NOTES.md section 4).

Measures on the current CUDA device, in one run, and writes one JSON document:
  * the two ceilings: a 4 GiB device-to-device copy (bytes read + written) and an
    8192^3 bf16 matrix product;
  * the linear layers of one Llama-3-8B step (32 layers of QKV 4096x6144,
    O 4096x4096, gate+up 4096x28672, down 14336x4096, plus the LM head
    4096x128256 for one token) for a sweep of step sizes -> linear_step_s;
  * the fixed cost of one step: host wall time of launching a CUDA graph of
    32 x 8 near-empty kernels and waiting for it;
  * attention baselines, Llama-3-8B attention shape (32 q heads, 8 kv heads,
    head dim 128, bf16, pages of 16 tokens):
      B0  scaled_dot_product_attention forced to the flash backend on K/V already
          contiguous in position order (decode: no mask; rebuild chunks:
          causal_lower_right, enable_gqa=True);
      B1  gather: index_select of the sequence's pages from a randomly permuted
          pool (+ cat of the chunk's fresh K/V for rebuilds), then the same SDPA;
          gather, SDPA and the two together are timed separately.
Timing: CUDA graphs of K calls (K chosen so a replay is >= ~100 us), >= 20
warm-up replays, >= 100 timed replays each between two CUDA events (fewer only
for the largest linear steps, see --budget-s), median and p10/p90 per call. A
cold-L2 variant (a 256 MiB buffer written before each timed call) for the
headline configurations.

Usage: python3 sdpa_baseline.py --out sdpa.json [--quick]
"""

import argparse
import datetime
import json
import math
import platform
import sys
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.attention.bias import causal_lower_right

HQ, HKV, HEAD_DIM, PAGE = 32, 8, 128, 16
DTYPE = torch.bfloat16
ELEM_BYTES = 2

DECODE_BATCH = [1, 8, 32, 128]
DECODE_CONTEXT = [1024, 4096, 16384, 65536]
MAX_DECODE_TOKENS = 2 * 1024 * 1024  # B * context; K+V of one layer = 8 GiB at the cap
REBUILD_TOKENS = [16, 64, 256, 1024, 4096]
REBUILD_POS = [0, 4096, 16384, 32768]
# Extra points at position 8k (issue 3 targets and H100_REFERENCE.md rows).
REBUILD_EXTRA = [(16, 8192), (64, 8192), (256, 8192), (512, 8192), (1024, 8192)]
LINEAR_TOKENS = [1, 16, 64, 128, 256, 384, 512, 1024, 2048, 4096, 8192]

# Llama-3-8B linear shapes.
LAYERS, HIDDEN, INTER, VOCAB = 32, 4096, 14336, 128256
QKV_OUT = (HQ + 2 * HKV) * HEAD_DIM  # 6144

HEADLINE_DECODE = {(32, 16384), (8, 16384), (1, 16384)}
HEADLINE_REBUILD = {(512, 8192), (16, 8192)}

FLUSH_BYTES = 256 * 1024 * 1024


def log(msg):
    print(f"[sdpa_baseline] {msg}", file=sys.stderr, flush=True)


def percentile(sorted_vals, q):
    if not sorted_vals:
        return float("nan")
    idx = min(len(sorted_vals) - 1, max(0, int(round(q * (len(sorted_vals) - 1)))))
    return sorted_vals[idx]


class Timer:
    """CUDA-graph replay timing with events (median, p10, p90 per call in us)."""

    def __init__(self, warmup, iters, target_replay_us, budget_s):
        self.warmup = warmup
        self.iters = iters
        self.target_replay_us = target_replay_us
        self.budget_s = budget_s
        self.flush = torch.empty(FLUSH_BYTES // 4, dtype=torch.float32, device="cuda")

    def _estimate_us(self, fn):
        for _ in range(3):
            fn()
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(5):
            fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) * 1000.0 / 5

    def _capture(self, fn, calls):
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(calls):
                fn()
        torch.cuda.synchronize()
        return graph

    def measure(self, fn, cold=False, min_iters=None):
        """Returns dict(median_us, p10_us, p90_us, iters, calls_per_replay, cold, graph)."""
        est = self._estimate_us(fn)
        calls = 1 if cold else max(1, min(10, int(math.ceil(self.target_replay_us / max(est, 1e-3)))))
        iters, warmup = self.iters, self.warmup
        if est * calls * (iters + warmup) > self.budget_s * 1e6:
            # Only the largest items (whole linear steps of thousands of tokens).
            iters = max(min_iters or 10, int(self.budget_s * 1e6 / (est * calls)) - warmup)
            warmup = max(2, min(warmup, iters // 2))
        use_graph = True
        try:
            graph = self._capture(fn, calls)
            run = graph.replay
        except Exception as exc:  # noqa: BLE001 - fall back to eager launches, recorded
            log(f"graph capture failed ({exc!r}); timing eager launches")
            torch.cuda.synchronize()
            use_graph = False

            def run():
                for _ in range(calls):
                    fn()

        for _ in range(warmup):
            if cold:
                self.flush.zero_()
            run()
        torch.cuda.synchronize()
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
        for i in range(iters):
            if cold:
                self.flush.zero_()
            starts[i].record()
            run()
            ends[i].record()
        torch.cuda.synchronize()
        per_call = sorted(s.elapsed_time(e) * 1000.0 / calls for s, e in zip(starts, ends))
        return {
            "median_us": percentile(per_call, 0.5),
            "p10_us": percentile(per_call, 0.1),
            "p90_us": percentile(per_call, 0.9),
            "iters": iters,
            "calls_per_replay": calls,
            "cold_l2": cold,
            "graph": use_graph,
        }


def device_meta():
    props = torch.cuda.get_device_properties(0)
    meta = {
        "device": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "sm_count": props.multi_processor_count,
        "total_mem_gib": round(props.total_memory / 2**30, 2),
        "l2_bytes": getattr(props, "L2_cache_size", None),
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "host": platform.node(),
        "command": " ".join(sys.argv),
    }
    try:
        from torch.nn import attention as attn_mod

        if hasattr(attn_mod, "list_flash_attention_impls"):
            meta["flash_attention_impls"] = [str(x) for x in attn_mod.list_flash_attention_impls()]
        if hasattr(attn_mod, "current_flash_attention_impl"):
            meta["current_flash_attention_impl"] = str(attn_mod.current_flash_attention_impl())
    except Exception as exc:  # noqa: BLE001 - informational only
        meta["flash_attention_impls_error"] = repr(exc)
    return meta


def measure_copy(timer):
    n = 4 * 2**30
    src = torch.empty(n, dtype=torch.uint8, device="cuda")
    src.random_(0, 255)
    dst = torch.empty_like(src)
    res = timer.measure(lambda: dst.copy_(src))
    res["bytes"] = 2 * n
    res["gb_per_s"] = 2 * n / (res["median_us"] * 1e-6) / 1e9
    del src, dst
    torch.cuda.empty_cache()
    return res


def measure_gemm(timer):
    n = 8192
    a = torch.randn(n, n, device="cuda", dtype=DTYPE)
    b = torch.randn(n, n, device="cuda", dtype=DTYPE)
    c = torch.empty(n, n, device="cuda", dtype=DTYPE)
    res = timer.measure(lambda: torch.matmul(a, b, out=c))
    res["m"] = res["n"] = res["k"] = n
    res["tflops"] = 2 * n**3 / (res["median_us"] * 1e-6) / 1e12
    del a, b, c
    torch.cuda.empty_cache()
    return res


def measure_linear_sweep(timer, tokens_list):
    """One Llama-3-8B step's linear layers (distinct weights per layer) per step size."""
    log("allocating 32 layers of Llama-3-8B linear weights (~15 GB)")
    weights = []
    for _ in range(LAYERS):
        weights.append(
            (
                torch.randn(HIDDEN, QKV_OUT, device="cuda", dtype=DTYPE) * 0.02,
                torch.randn(HIDDEN, HIDDEN, device="cuda", dtype=DTYPE) * 0.02,
                torch.randn(HIDDEN, 2 * INTER, device="cuda", dtype=DTYPE) * 0.02,
                torch.randn(INTER, HIDDEN, device="cuda", dtype=DTYPE) * 0.02,
            )
        )
    lm_head = torch.randn(HIDDEN, VOCAB, device="cuda", dtype=DTYPE) * 0.02
    params_per_layer = HIDDEN * QKV_OUT + HIDDEN * HIDDEN + HIDDEN * 2 * INTER + INTER * HIDDEN
    weight_bytes = (LAYERS * params_per_layer + HIDDEN * VOCAB) * ELEM_BYTES
    rows = []
    for t in tokens_list:
        x = torch.randn(t, HIDDEN, device="cuda", dtype=DTYPE)
        h = torch.randn(t, INTER, device="cuda", dtype=DTYPE)
        out_qkv = torch.empty(t, QKV_OUT, device="cuda", dtype=DTYPE)
        out_o = torch.empty(t, HIDDEN, device="cuda", dtype=DTYPE)
        out_gu = torch.empty(t, 2 * INTER, device="cuda", dtype=DTYPE)
        out_down = torch.empty(t, HIDDEN, device="cuda", dtype=DTYPE)
        out_lm = torch.empty(1, VOCAB, device="cuda", dtype=DTYPE)

        def step():
            for w_qkv, w_o, w_gu, w_down in weights:
                torch.matmul(x, w_qkv, out=out_qkv)
                torch.matmul(x, w_o, out=out_o)
                torch.matmul(x, w_gu, out=out_gu)
                torch.matmul(h, w_down, out=out_down)
            torch.matmul(x[:1], lm_head, out=out_lm)

        res = timer.measure(step, min_iters=5)
        flops = 2 * t * LAYERS * params_per_layer + 2 * HIDDEN * VOCAB
        res.update(
            {
                "tokens": t,
                "seconds": res["median_us"] * 1e-6,
                "tflops": flops / (res["median_us"] * 1e-6) / 1e12,
                "weight_gb_per_s": weight_bytes / (res["median_us"] * 1e-6) / 1e9,
            }
        )
        log(f"linear step T={t}: {res['median_us'] / 1000:.3f} ms")
        rows.append(res)
        del x, h, out_qkv, out_o, out_gu, out_down, out_lm
    del weights, lm_head
    torch.cuda.empty_cache()
    return rows


def measure_step_overhead():
    """Host wall time of replaying a graph of 32 x 8 near-empty kernels + synchronize."""
    x = torch.zeros(1, device="cuda")
    graph = torch.cuda.CUDAGraph()
    torch.cuda.synchronize()
    with torch.cuda.graph(graph):
        for _ in range(LAYERS * 8):
            x.add_(1.0)
    torch.cuda.synchronize()
    for _ in range(20):
        graph.replay()
        torch.cuda.synchronize()
    times = []
    for _ in range(200):
        t0 = time.perf_counter()
        graph.replay()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e6)
    times.sort()
    return {
        "kernels": LAYERS * 8,
        "median_us": percentile(times, 0.5),
        "p10_us": percentile(times, 0.1),
        "p90_us": percentile(times, 0.9),
    }


class Sdpa:
    """Flash-only SDPA with GQA; falls back to repeat_interleave if flash rejects GQA."""

    def __init__(self):
        self.gqa_native = True
        self.gqa_note = "enable_gqa=True accepted by the flash backend"
        q = torch.randn(1, 64, HQ, HEAD_DIM, device="cuda", dtype=DTYPE).transpose(1, 2)
        k = torch.randn(1, 128, HKV, HEAD_DIM, device="cuda", dtype=DTYPE).transpose(1, 2)
        try:
            self(q, k, k, causal=True)
            self(q[:, :, :1], k, k, causal=False)
            torch.cuda.synchronize()
        except Exception as exc:  # noqa: BLE001 - recorded in the output
            self.gqa_native = False
            self.gqa_note = f"flash rejected enable_gqa ({exc!r}); K/V repeated per q head"
            log(self.gqa_note)
            self(q, k, k, causal=True)
            torch.cuda.synchronize()
        # causal_lower_right calls the flash op directly when flash accepts the inputs,
        # else the memory-efficient one (the backend context does not stop that): check.
        try:
            from torch.backends.cuda import SDPAParams, can_use_flash_attention

            kk = k if self.gqa_native else k.repeat_interleave(HQ // HKV, dim=1)
            # Exactly what CausalBias(LOWER_RIGHT) asks: is_causal=False in the params.
            params = SDPAParams(q, kk, kk, None, 0.0, False, self.gqa_native)
            self.lower_right_flash = bool(can_use_flash_attention(params, True))
        except Exception as exc:  # noqa: BLE001 - recorded in the output
            self.lower_right_flash = f"unknown ({exc!r})"
        log(f"lower-right causal runs on flash: {self.lower_right_flash}")

    def __call__(self, q, k, v, causal):
        """q [B,Hq,Lq,D], k/v [B,Hkv,Lk,D] (any strides with unit last stride)."""
        if not self.gqa_native:
            k = k.repeat_interleave(HQ // HKV, dim=1)
            v = v.repeat_interleave(HQ // HKV, dim=1)
        lq, lk = q.shape[2], k.shape[2]
        mask = causal_lower_right(lq, lk) if causal and lq != lk else None
        is_causal = bool(causal and lq == lk)
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            if self.gqa_native:
                return F.scaled_dot_product_attention(
                    q, k, v, attn_mask=mask, is_causal=is_causal, enable_gqa=True
                )
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal)


def kv_bytes(tokens):
    return tokens * 2 * HKV * HEAD_DIM * ELEM_BYTES


def attention_flops(q_tokens, pos):
    """Causal FLOPs of q_tokens queries at positions pos..pos+q-1 (2 matmuls)."""
    pairs = q_tokens * pos + q_tokens * (q_tokens + 1) // 2
    return 4 * HEAD_DIM * HQ * pairs


def make_pool(num_pages):
    """Separate K and V pools [P,16,Hkv,D], random, and a random page permutation."""
    pool_k = torch.randn(num_pages, PAGE, HKV, HEAD_DIM, device="cuda", dtype=DTYPE)
    pool_v = torch.randn(num_pages, PAGE, HKV, HEAD_DIM, device="cuda", dtype=DTYPE)
    perm = torch.randperm(num_pages, device="cuda")
    return pool_k, pool_v, perm


def bench_decode(timer, sdpa, batch, ctx, cold):
    tokens = batch * ctx
    pages = tokens // PAGE
    q = torch.randn(batch, 1, HQ, HEAD_DIM, device="cuda", dtype=DTYPE).transpose(1, 2)
    k0 = torch.randn(batch, ctx, HKV, HEAD_DIM, device="cuda", dtype=DTYPE).transpose(1, 2)
    v0 = torch.randn(batch, ctx, HKV, HEAD_DIM, device="cuda", dtype=DTYPE).transpose(1, 2)
    base = {"kind": "decode", "batch": batch, "context": ctx, "q_tokens": 1, "pos": ctx,
            "kv_bytes": kv_bytes(tokens), "flops": 4 * HEAD_DIM * HQ * tokens}
    out = []
    b0 = timer.measure(lambda: sdpa(q, k0, v0, causal=False), cold=cold)
    out.append({**base, "variant": "B0", **b0})
    del k0, v0
    pool_k, pool_v, perm = make_pool(pages)

    def gather():
        k = torch.index_select(pool_k, 0, perm).view(batch, ctx, HKV, HEAD_DIM).transpose(1, 2)
        v = torch.index_select(pool_v, 0, perm).view(batch, ctx, HKV, HEAD_DIM).transpose(1, 2)
        return k, v

    k1, v1 = gather()
    out.append({**base, "variant": "B1_gather", **timer.measure(gather, cold=cold)})
    out.append({**base, "variant": "B1_sdpa", **timer.measure(lambda: sdpa(q, k1, v1, causal=False), cold=cold)})
    del k1, v1

    def total():
        k, v = gather()
        return sdpa(q, k, v, causal=False)

    out.append({**base, "variant": "B1_total", **timer.measure(total, cold=cold)})
    del pool_k, pool_v, perm, q
    torch.cuda.empty_cache()
    return out


def bench_rebuild(timer, sdpa, q_tokens, pos, cold):
    total_kv = pos + q_tokens
    q = torch.randn(1, q_tokens, HQ, HEAD_DIM, device="cuda", dtype=DTYPE).transpose(1, 2)
    k0 = torch.randn(1, total_kv, HKV, HEAD_DIM, device="cuda", dtype=DTYPE).transpose(1, 2)
    v0 = torch.randn(1, total_kv, HKV, HEAD_DIM, device="cuda", dtype=DTYPE).transpose(1, 2)
    base = {"kind": "rebuild", "batch": 1, "context": total_kv, "q_tokens": q_tokens, "pos": pos,
            "kv_bytes": kv_bytes(total_kv), "flops": attention_flops(q_tokens, pos)}
    out = [{**base, "variant": "B0", **timer.measure(lambda: sdpa(q, k0, v0, causal=True), cold=cold)}]
    del k0, v0
    fresh_k = torch.randn(1, q_tokens, HKV, HEAD_DIM, device="cuda", dtype=DTYPE)
    fresh_v = torch.randn(1, q_tokens, HKV, HEAD_DIM, device="cuda", dtype=DTYPE)
    pages = pos // PAGE
    if pages > 0:
        pool_k, pool_v, perm = make_pool(pages)

        def gather():
            k = torch.index_select(pool_k, 0, perm).view(1, pos, HKV, HEAD_DIM)
            v = torch.index_select(pool_v, 0, perm).view(1, pos, HKV, HEAD_DIM)
            k = torch.cat([k, fresh_k], dim=1).transpose(1, 2)
            v = torch.cat([v, fresh_v], dim=1).transpose(1, 2)
            return k, v
    else:

        def gather():
            return fresh_k.transpose(1, 2), fresh_v.transpose(1, 2)

    k1, v1 = gather()
    if pages > 0:
        out.append({**base, "variant": "B1_gather", **timer.measure(gather, cold=cold)})
    out.append({**base, "variant": "B1_sdpa", **timer.measure(lambda: sdpa(q, k1, v1, causal=True), cold=cold)})
    del k1, v1

    def total():
        k, v = gather()
        return sdpa(q, k, v, causal=True)

    out.append({**base, "variant": "B1_total", **timer.measure(total, cold=cold)})
    torch.cuda.empty_cache()
    return out


def bench_b0_only(timer, sdpa, kind, batch, q_tokens, pos):
    """B0 alone (used again under another flash implementation)."""
    if kind == "decode":
        ctx = pos
        q = torch.randn(batch, 1, HQ, HEAD_DIM, device="cuda", dtype=DTYPE).transpose(1, 2)
        k = torch.randn(batch, ctx, HKV, HEAD_DIM, device="cuda", dtype=DTYPE).transpose(1, 2)
        v = torch.randn(batch, ctx, HKV, HEAD_DIM, device="cuda", dtype=DTYPE).transpose(1, 2)
        base = {"kind": "decode", "batch": batch, "context": ctx, "q_tokens": 1, "pos": ctx,
                "kv_bytes": kv_bytes(batch * ctx), "flops": 4 * HEAD_DIM * HQ * batch * ctx}
        res = timer.measure(lambda: sdpa(q, k, v, causal=False))
    else:
        total_kv = pos + q_tokens
        q = torch.randn(1, q_tokens, HQ, HEAD_DIM, device="cuda", dtype=DTYPE).transpose(1, 2)
        k = torch.randn(1, total_kv, HKV, HEAD_DIM, device="cuda", dtype=DTYPE).transpose(1, 2)
        v = torch.randn(1, total_kv, HKV, HEAD_DIM, device="cuda", dtype=DTYPE).transpose(1, 2)
        base = {"kind": "rebuild", "batch": 1, "context": total_kv, "q_tokens": q_tokens, "pos": pos,
                "kv_bytes": kv_bytes(total_kv), "flops": attention_flops(q_tokens, pos)}
        res = timer.measure(lambda: sdpa(q, k, v, causal=True))
    del q, k, v
    torch.cuda.empty_cache()
    return {**base, **res}


# Configurations re-timed with FA3 activated (informational; the default impl is B0).
FA3_CONFIGS = [("decode", 32, 1, 16384), ("decode", 8, 1, 16384), ("rebuild", 1, 16, 8192),
               ("rebuild", 1, 512, 8192), ("rebuild", 1, 1024, 8192), ("rebuild", 1, 4096, 32768)]


def measure_fa3(timer, sdpa):
    """Activates the FA3 flash implementation if PyTorch lists it, re-times B0."""
    from torch.nn import attention as attn_mod

    if not hasattr(attn_mod, "activate_flash_attention_impl"):
        return [], "activate_flash_attention_impl not in this PyTorch"
    try:
        if "FA3" not in [str(x) for x in attn_mod.list_flash_attention_impls()]:
            return [], "FA3 not listed"
        attn_mod.activate_flash_attention_impl("FA3")
    except Exception as exc:  # noqa: BLE001 - recorded in the output
        return [], f"activating FA3 failed: {exc!r}"
    note = f"FA3 activated (current impl: {attn_mod.current_flash_attention_impl()})"
    out = []
    for kind, batch, q_tokens, pos in FA3_CONFIGS:
        try:
            rec = bench_b0_only(timer, sdpa, kind, batch, q_tokens, pos)
        except Exception as exc:  # noqa: BLE001 - record and go on
            log(f"B0_FA3 {kind} B={batch} q={q_tokens} pos={pos} failed: {exc!r}")
            out.append({"kind": kind, "batch": batch, "q_tokens": q_tokens, "pos": pos,
                        "variant": "B0_FA3", "error": repr(exc)})
            torch.cuda.empty_cache()
            continue
        rec["variant"] = "B0_FA3"
        out.append(annotate(rec))
        log(f"B0_FA3 {kind} B={batch} q={q_tokens} pos={pos}: {rec['median_us']:.1f}us")
    return out, note


def annotate(rec):
    t = rec["median_us"] * 1e-6
    if rec["variant"] in ("B0", "B0_FA3", "B1_sdpa", "B1_total"):
        rec["kv_read_gb_per_s"] = rec["kv_bytes"] / t / 1e9
        rec["tflops"] = rec["flops"] / t / 1e12
    return rec


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="JSON output file")
    ap.add_argument("--quick", action="store_true", help="a few configurations only (smoke test)")
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--iters", type=int, default=100)
    ap.add_argument("--budget-s", type=float, default=3.0, help="max seconds per measured item")
    ap.add_argument("--skip-linear", action="store_true")
    args = ap.parse_args()

    if not torch.cuda.is_available():
        log("no CUDA device")
        return 2
    torch.manual_seed(1234)
    torch.backends.cuda.matmul.allow_tf32 = False
    result = {"schema": "asymcache.sdpa_baseline.v1", "meta": device_meta()}
    log(f"device {result['meta']['device']}, torch {torch.__version__}")
    timer = Timer(args.warmup, args.iters, target_replay_us=100.0, budget_s=args.budget_s)

    result["copy"] = measure_copy(timer)
    log(f"copy {result['copy']['gb_per_s']:.0f} GB/s (read+write)")
    result["gemm"] = measure_gemm(timer)
    log(f"gemm {result['gemm']['tflops']:.0f} TFLOP/s")
    result["step_overhead"] = measure_step_overhead()
    log(f"step overhead {result['step_overhead']['median_us']:.1f} us")

    sdpa = Sdpa()
    result["meta"]["gqa"] = sdpa.gqa_note
    result["meta"]["lower_right_causal_on_flash"] = sdpa.lower_right_flash
    records = []
    decode = [(b, n) for b in DECODE_BATCH for n in DECODE_CONTEXT if b * n <= MAX_DECODE_TOKENS]
    rebuild = [(c, p) for c in REBUILD_TOKENS for p in REBUILD_POS] + REBUILD_EXTRA
    if args.quick:
        decode = [(1, 4096), (32, 16384)]
        rebuild = [(16, 8192), (512, 8192)]
    for batch, ctx in decode:
        for cold in ([False, True] if (batch, ctx) in HEADLINE_DECODE else [False]):
            try:
                recs = bench_decode(timer, sdpa, batch, ctx, cold)
            except Exception as exc:  # noqa: BLE001 - record and go on
                log(f"decode B={batch} N={ctx} failed: {exc!r}")
                records.append({"kind": "decode", "batch": batch, "context": ctx, "error": repr(exc)})
                torch.cuda.empty_cache()
                continue
            records.extend(annotate(r) for r in recs)
            log(f"decode B={batch} N={ctx} cold={cold}: " +
                ", ".join(f"{r['variant']} {r['median_us']:.1f}us" for r in recs))
    for q_tokens, pos in rebuild:
        for cold in ([False, True] if (q_tokens, pos) in HEADLINE_REBUILD else [False]):
            try:
                recs = bench_rebuild(timer, sdpa, q_tokens, pos, cold)
            except Exception as exc:  # noqa: BLE001 - record and go on
                log(f"rebuild c={q_tokens} p={pos} failed: {exc!r}")
                records.append({"kind": "rebuild", "q_tokens": q_tokens, "pos": pos, "error": repr(exc)})
                torch.cuda.empty_cache()
                continue
            records.extend(annotate(r) for r in recs)
            log(f"rebuild c={q_tokens} p={pos} cold={cold}: " +
                ", ".join(f"{r['variant']} {r['median_us']:.1f}us" for r in recs))
    if not args.quick:
        fa3_records, fa3_note = measure_fa3(timer, sdpa)
        records.extend(fa3_records)
        result["meta"]["fa3"] = fa3_note
        log(fa3_note)
    result["attention"] = records

    if not args.skip_linear:
        tokens = [1, 128, 512, 2048] if args.quick else LINEAR_TOKENS
        try:
            result["linear_step"] = measure_linear_sweep(timer, tokens)
        except Exception as exc:  # noqa: BLE001 - record and go on
            log(f"linear sweep failed: {exc!r}")
            result["linear_step_error"] = repr(exc)

    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
