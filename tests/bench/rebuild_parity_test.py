#!/usr/bin/env python3
"""Tests bench/gpu/rebuild_parity.py (run from the repository root by ctest).

1. Synthetic rounds with known medians: the table's medians, ratios and win
   counts are the ones computed by hand; a round missing its SDPA file makes
   the script exit 1 and the affected rows use only the complete rounds.
2. The committed H100 rounds (docs/results/rebuild_parity_h100/rounds.tar.gz)
   regenerate the committed table (parity.md) row for row.
"""
import json
import os
import subprocess
import sys
import tarfile
import tempfile

SCRIPT = "bench/gpu/rebuild_parity.py"


def write_round(d, r, msa, b0):
    with open(os.path.join(d, f"msa_{r}.jsonl"), "w") as f:
        f.write(json.dumps({"kind": "meta"}) + "\n")
        for (q, pos, cold), us in msa.items():
            f.write(json.dumps({"kind": "rebuild", "variant": "MSA", "q_tokens": q, "pos": pos,
                                "cold_l2": cold, "median_us": us}) + "\n")
    if b0 is not None:
        att = [{"kind": "rebuild", "variant": "B0", "q_tokens": q, "pos": pos, "cold_l2": cold,
                "median_us": us} for (q, pos, cold), us in b0.items()]
        att.append({"kind": "rebuild", "variant": "B1_total", "q_tokens": 512, "pos": 8192,
                    "cold_l2": False, "median_us": 1.0})
        with open(os.path.join(d, f"sdpa_{r}.json"), "w") as f:
            json.dump({"meta": {"device": "Test Card"}, "attention": att}, f)


def run(rounds_dir, out_md):
    return subprocess.run([sys.executable, SCRIPT, "--rounds", rounds_dir, "--out-md", out_md],
                          capture_output=True, text=True)


def row(md, q, pos, l2):
    prefix = f"| {q} | {pos} | {l2} |"
    rows = [line for line in open(md).read().splitlines() if line.startswith(prefix)]
    assert len(rows) == 1, (prefix, rows)
    return [c.strip() for c in rows[0].strip("|").split("|")]


def test_synthetic():
    keys = [(512, 8192, False), (512, 8192, True), (16, 8192, False), (16, 8192, True)]
    msa = [[100.0, 200.0, 10.0, 20.0], [104.0, 196.0, 11.0, 21.0], [98.0, 210.0, 9.0, 19.0]]
    b0 = [[101.0, 199.0, 20.0, 30.0], [102.0, 200.0, 20.0, 30.0], [103.0, 201.0, 20.0, 30.0]]
    with tempfile.TemporaryDirectory() as d:
        for r in range(3):
            write_round(d, r + 1, dict(zip(keys, msa[r])), dict(zip(keys, b0[r])))
        out = os.path.join(d, "p.md")
        res = run(d, out)
        assert res.returncode == 0, res.stderr
        c = row(out, 512, 8192, "warm")
        # MSA 100, 104, 98 -> median 100; B0 101, 102, 103 -> 102.
        assert c[3] == "100.0, 104.0, 98.0", c
        assert c[5] == "100.0" and c[6] == "102.0", c
        assert c[7] == f"{100 / 102:.3f}", c
        assert c[8] == f"{98 / 103:.3f}–{104 / 102:.3f}", c
        assert c[9] == "2/3", c  # 100 <= 101, 104 > 102, 98 <= 103
        c = row(out, 512, 8192, "cold")
        assert c[9] == "1/3", c  # 200 > 199, 196 <= 200, 210 > 201
        assert c[7] == "1.000", c  # medians 200 and 200
    with tempfile.TemporaryDirectory() as d:
        for r in range(3):
            write_round(d, r + 1, dict(zip(keys, msa[r])), dict(zip(keys, b0[r])) if r != 1 else None)
        out = os.path.join(d, "p.md")
        res = run(d, out)
        assert res.returncode == 1, "a round without its SDPA file must fail"
        c = row(out, 512, 8192, "warm")
        assert c[3] == "100.0, 98.0", c  # round 2 left out
        assert "Test Card" in open(out).read()


def test_committed_rounds_reproduce():
    committed = "docs/results/rebuild_parity_h100/parity.md"
    with tempfile.TemporaryDirectory() as d:
        with tarfile.open("docs/results/rebuild_parity_h100/rounds.tar.gz") as tar:
            tar.extractall(d)
        out = os.path.join(d, "p.md")
        res = run(d, out)
        assert res.returncode == 0, res.stderr
        got = [line for line in open(out).read().splitlines() if line.startswith("| ")]
        want = [line for line in open(committed).read().splitlines() if line.startswith("| ")]
        assert got == want, "\n".join(got + ["-- committed --"] + want)


if __name__ == "__main__":
    test_synthetic()
    test_committed_rounds_reproduce()
    print("rebuild_parity_test: ok")
