"""The seed article's numpy merge, W + A @ B, timed inside Python for bench/run.ts.

Reads a JSON job on stdin: {"cases": [{"d_out", "d_in", "r", "reps", "seed", ...}]}.
Writes JSON on stdout: per case the median seconds of the merge, and a checksum sample for the bench's
own float64 check. Run single-threaded (OPENBLAS_NUM_THREADS=1) by the caller.
"""
import ctypes
import glob
import json
import os
import sys
import time

import numpy as np


def openblas_core():
    """The OpenBLAS kernel actually in use, read from the library numpy loaded."""
    libs = glob.glob(os.path.join(os.path.dirname(np.__file__), "..", "numpy.libs", "*openblas*.so*"))
    for path in libs:
        lib = ctypes.CDLL(path)
        for name in ("scipy_openblas_get_corename64_", "openblas_get_corename64_", "openblas_get_corename"):
            fn = getattr(lib, name, None)
            if fn is not None:
                fn.restype = ctypes.c_char_p
                threads = getattr(lib, name.replace("get_corename", "get_num_threads"), None)
                n = threads() if threads else None
                return fn().decode(), n
    return "unknown", None


def main():
    job = json.load(sys.stdin)
    core, threads = openblas_core()
    out = {"numpy": np.__version__, "openblas_core": core, "openblas_threads": threads, "cases": []}
    for case in job["cases"]:
        rng = np.random.default_rng(case["seed"])
        d_out, d_in, r = case["d_out"], case["d_in"], case["r"]
        W = rng.standard_normal((d_out, d_in), dtype=np.float32)
        A = rng.standard_normal((d_out, r), dtype=np.float32)
        B = rng.standard_normal((r, d_in), dtype=np.float32)
        merged = W + A @ B  # the seed code
        ref = W[0].astype(np.float64) + A[0].astype(np.float64) @ B.astype(np.float64)
        err = float(np.max(np.abs(merged[0] - ref) / (np.abs(ref) + 1e-3)))
        for _ in range(3):  # warm-up: let the allocator settle, as a long-running process would
            merged = W + A @ B
        times = []
        for _ in range(case["reps"]):
            t = time.perf_counter()
            merged = W + A @ B
            times.append(time.perf_counter() - t)
        times.sort()
        out["cases"].append({**case, "median_s": times[len(times) // 2], "row0_rel_err": err})
    json.dump(out, sys.stdout)


main()
