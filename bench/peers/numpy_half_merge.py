"""numpy's half-precision merge, (W.astype(f32) + s * A @ B).astype(f16), timed inside Python for bench/half.bench.ts.

Reads {"d_out", "d_in", "r", "reps", "seed"} on stdin; writes the median seconds and a sample of the
result (row 0's first 16 values, decoded) for the bench's own check. numpy has no bfloat16 (that needs
the separate ml_dtypes package), so only f16 is timed. Run single-threaded (OPENBLAS_NUM_THREADS=1).
"""
import json
import sys
import time

import numpy as np


def main():
    job = json.load(sys.stdin)
    rng = np.random.default_rng(job["seed"])
    d_out, d_in, r = job["d_out"], job["d_in"], job["r"]
    W = (rng.standard_normal((d_out, d_in), dtype=np.float32) * 0.05).astype(np.float16)
    A = rng.standard_normal((d_out, r), dtype=np.float32) * 0.02
    B = rng.standard_normal((r, d_in), dtype=np.float32) * 0.05
    s = np.float32(0.5)
    times = []
    for _ in range(job["reps"]):
        t = time.perf_counter()
        out = (W.astype(np.float32) + s * (A @ B)).astype(np.float16)
        times.append(time.perf_counter() - t)
    ref = W[0, :16].astype(np.float64) + 0.5 * (A[0].astype(np.float64) @ B[:, :16].astype(np.float64))
    err = float(np.max(np.abs(out[0, :16].astype(np.float64) - ref) / (np.abs(ref) + 1e-3)))
    json.dump({"numpy": np.__version__, "median_s": sorted(times)[len(times) // 2], "row0_rel_err": err}, sys.stdout)


main()
