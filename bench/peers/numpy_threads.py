"""numpy peers for bench/threads.bench.ts: the seed merge W + A @ B and the GEMM X @ W.T.

Reads a JSON job on stdin: {"cases": [{"kind": "merge", "d_out", "d_in", "r"} | {"kind": "gemm", "n", "m", "k"},
with "reps" and "seed"]}. Writes per case the median seconds and a relative error of row 0 against
float64. The caller runs this once per thread count (OPENBLAS_NUM_THREADS is read when numpy loads)
and keeps the best.
"""
import json
import sys
import time

import numpy as np


def median_time(fn, reps):
    for _ in range(2):
        fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    times.sort()
    return times[len(times) // 2]


def main():
    job = json.load(sys.stdin)
    out = {"numpy": np.__version__, "cases": []}
    for case in job["cases"]:
        rng = np.random.default_rng(case["seed"])
        if case["kind"] == "merge":
            d_out, d_in, r = case["d_out"], case["d_in"], case["r"]
            W = rng.standard_normal((d_out, d_in), dtype=np.float32)
            A = rng.standard_normal((d_out, r), dtype=np.float32)
            B = rng.standard_normal((r, d_in), dtype=np.float32)
            got = W + A @ B
            ref = W[0].astype(np.float64) + A[0].astype(np.float64) @ B.astype(np.float64)
            fn = lambda: W + A @ B
        else:
            n, m, k = case["n"], case["m"], case["k"]
            X = rng.standard_normal((n, k), dtype=np.float32)
            W = rng.standard_normal((m, k), dtype=np.float32)
            got = X @ W.T
            ref = X[0].astype(np.float64) @ W.T.astype(np.float64)
            fn = lambda: X @ W.T
        err = float(np.max(np.abs(got[0] - ref)) / np.max(np.abs(ref)))  # relative to the row's scale
        out["cases"].append({**case, "median_s": median_time(fn, case["reps"]), "row0_rel_err": err})
    json.dump(out, sys.stdout)


main()
