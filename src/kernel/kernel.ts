/**
 * The kernel layer: the ONLY code that calls the wasm exports.
 *
 * Everything above it (operations, layers, optimizers, and later the file
 * loaders and the worker pool's callers) hands it descriptors. On every call
 * it:
 *   1. checks each descriptor: owned by this instance, still live (not
 *      disposed, not collected, not reused), the dtype the kernel takes, and
 *      inside its block;
 *   2. reserves scratch (packed panels, the edge-tile spill) from one block
 *      it owns, grown to the largest need and then reused, so a training loop
 *      allocates nothing per step;
 *   3. splits the kernel into calls over row (or column, or element) ranges
 *      and runs them on the worker pool (src/pool/) when the problem is big
 *      enough: the first range on the calling thread, the rest on workers.
 *      Every output element is computed by the same operations whatever the
 *      split, so results are bit-identical for any thread count;
 *   4. turns a wasm trap into a LoRAError (a trap is a bug: the checks above
 *      should make it impossible).
 *
 * Validation of user arguments (shapes against each other, options) is the
 * operations' job (src/ops/); the checks here are the last line that keeps a
 * bug or a stale object from writing into someone else's memory.
 */
import { LoRADisposedError, LoRAError, LoRATypeError } from '../errors.js';
import { halfValue } from '../memory/half.js';
import type { Block, WasmHeap } from '../memory/heap.js';
import { DTYPES, type DType } from '../memory/matrix.js';
import type { Call, WorkerPool } from '../pool/pool.js';
import { ITEM_BYTES, type MatrixDesc, shapeOf } from './descriptor.js';
import {
  DTYPE_CODE, Epilogue, GEMM_KC, GEMM_MC, GEMM_NC, type Kernels, TILE_COLS, TILE_ROWS, TILE_TMP_BYTES, packedABytes, packedBBytes,
} from './kernels.js';

const F32: readonly DType[] = ['f32'];
const ALIGN = (n: number): number => Math.ceil(n / 64) * 64;

/** Bytes of packed B kept cache-resident per column block of a rank-r update. */
const B_PANEL_BYTES = 128 * 1024;
/** Columns per packed-B block for rank r: a multiple of 8 whose r·cols·4 bytes fit B_PANEL_BYTES. */
export const colBlockFor = (r: number): number =>
  Math.max(TILE_COLS, Math.floor(B_PANEL_BYTES / (r * 4 * TILE_COLS)) * TILE_COLS);

/**
 * One rank-r update: out = [src +] (scaleA·L)·(scaleB·R). out and src may be f32, f16 or bf16
 * (a half out is rounded once); L and R may be any of the three too (decoded into f32 scratch).
 */
export interface RankUpdate {
  /** [n, cols]; not written by Epilogue.Check. */
  out: MatrixDesc;
  /** [n, cols]; read by Add and Check (may be `out` itself). */
  src?: MatrixDesc;
  /** L: [n, r] row-major. */
  a: MatrixDesc;
  /** R: [r, cols] row-major, or with transB stored [cols, r] (R = bᵀ). */
  b: MatrixDesc;
  transB?: boolean;
  scaleA: number;
  scaleB?: number;
  epilogue: Epilogue.Store | Epilogue.Add | Epilogue.Check;
}

export interface GemmCall {
  transX?: boolean;
  transY?: boolean;
  alpha?: number;
  beta?: number;
}

/** What a module says of itself before any heap exists: its flavour and the first byte past its static data. */
export function moduleInfo(kernels: Kernels): { relaxed: boolean; heapBase: number } {
  return { relaxed: kernels.simdFlavour() === 1, heapBase: kernels.heapBase() >>> 0 };
}

/**
 * Work below which a call stays on the calling thread, per thread it would use.
 * Measured by `npm run bench -- --only=threads` (the notes of its threshold
 * step: the same call forced onto 2 threads against 1, paired), in two runs on
 * this shared 2-core machine: a pool round trip costs 3–6 µs while the worker
 * is awake; a merge of 128×128 r=8 (131 k multiply-adds) lost or broke even,
 * 512×512 r=8 (2 M) gained 1.44× in one run and lost 6 % in the other, and
 * 1024×1024 r=8 (8 M) gained 1.5–1.6× in both; an f32 → f16 conversion
 * touching 24 KB lost and one touching 96 KB gained 1.3–1.4× in both.
 *   MIN_MACS_PER_THREAD: multiply-adds, for the rank-r update and GEMM (so a
 *     512×512 r=8 merge stays whole and 1024×1024 r=8 is split);
 *   MIN_BYTES_PER_THREAD: bytes read and written, for the streaming kernels
 *     (scans, conversion, ReLU, optimizer steps).
 */
export const MIN_MACS_PER_THREAD = 2 ** 20;
export const MIN_BYTES_PER_THREAD = 2 ** 16;
/**
 * @internal The thresholds in force. Tests lower them to 1 so that even small
 * shapes are split over every thread (the split, not the size, is under test).
 */
export const splitPolicy = { minMacs: MIN_MACS_PER_THREAD, minBytes: MIN_BYTES_PER_THREAD };

/** Element ranges of streaming kernels start at multiples of this, so SIMD lanes and scalar tails see the same elements as in one call. */
const ELEMENT_ALIGN = 64;

/** [start, end) ranges: `parts` nearly equal runs of whole `align` blocks covering [0, total). */
export function splitRange(total: number, align: number, parts: number): [number, number][] {
  const blocks = Math.ceil(total / align);
  const n = Math.max(1, Math.min(parts, blocks));
  const out: [number, number][] = [];
  for (let t = 0; t < n; t++) {
    const b0 = Math.floor((blocks * t) / n);
    const b1 = Math.floor((blocks * (t + 1)) / n);
    out.push([b0 * align, Math.min(total, b1 * align)]);
  }
  return out;
}

export class KernelLayer {
  readonly heap: WasmHeap;
  readonly #k: Kernels;
  #pool: WorkerPool | undefined;
  #scratch: Block | undefined;

  constructor(heap: WasmHeap, kernels: Kernels, pool?: WorkerPool) {
    this.heap = heap;
    this.#k = kernels;
    this.#pool = pool;
  }

  /** Threads a call may use now: the calling thread plus the workers that are ready. */
  get threads(): number {
    return 1 + (this.#pool?.available ?? 0);
  }

  /** The pool (undefined with threads: 1 or after endPool). */
  get pool(): WorkerPool | undefined {
    return this.#pool;
  }

  /** Ends the worker pool; later calls run on the calling thread. */
  endPool(): void {
    this.#pool?.dispose();
    this.#pool = undefined;
  }

  // ------------------------------------------------------------ guards

  /** The byte pointer of a checked descriptor. */
  #ptr(fn: string, d: MatrixDesc, contiguous = true, dtypes: readonly DType[] = F32): number {
    if (d.heap !== this.heap) {
      throw new LoRATypeError(`${fn}: ${d.name} (Matrix ${shapeOf(d)}) belongs to another lora-wasm instance`);
    }
    if (!this.heap.isLive(d.block)) {
      throw new LoRADisposedError(`${fn}: ${d.name} (Matrix ${shapeOf(d)}) was disposed and cannot be used`);
    }
    if (!dtypes.includes(d.dtype)) {
      throw new LoRATypeError(`${fn}: ${d.name} is ${d.dtype} but this operation supports ${dtypes.join(', ')} only`);
    }
    const end = d.offset + ((d.rows - 1) * d.ld + d.cols) * ITEM_BYTES[d.dtype];
    if (d.rows < 1 || d.cols < 1 || d.ld < d.cols || d.offset < 0 || end > d.block.size || (contiguous && d.ld !== d.cols)) {
      throw new LoRAError(`${fn}: internal error, ${d.name} ${shapeOf(d)} (ld ${d.ld}, offset ${d.offset}) does not fit its ${d.block.size}-byte block`);
    }
    return d.block.ptr + d.offset;
  }

  /** Shapes were validated above this layer; a mismatch here is a bug, reported before any kernel runs. */
  #fits(fn: string, ok: boolean, kernel: string, ds: MatrixDesc[]): void {
    if (!ok) throw new LoRAError(`${fn}: internal error, ${kernel} got ${ds.map((d) => `${d.name} ${shapeOf(d)}`).join(', ')}`);
  }

  /** Runs kernel code; a wasm trap becomes a LoRAError (it is a bug: the checks should have caught it). */
  #call<T>(fn: string, body: () => T): T {
    try {
      return body();
    } catch (e) {
      if (e instanceof WebAssembly.RuntimeError) {
        throw new LoRAError(`${fn}: internal error, the wasm kernel trapped (${e.message}); please report this`, { cause: e });
      }
      throw e;
    }
  }

  /** How many threads a call with `work` units should use (min per thread `unit`), at most `maxParts`. */
  #parts(work: number, unit: number, maxParts: number): number {
    const worth = Math.min(Math.floor(work / unit), maxParts);
    // below the threshold the pool is not consulted at all (asking it checks each worker is alive)
    if (this.#pool === undefined || worth < 2) return 1;
    return Math.min(this.threads, worth);
  }

  /**
   * Runs the calls, calls[0] on this thread and the others on workers, and
   * returns their results in order. One call runs directly.
   */
  #run(fn: string, calls: Call[], parts?: string[]): number[] {
    const k = this.#k as unknown as Record<string, (...args: number[]) => number>;
    const own = (c: Call): number => this.#call(fn, () => k[c[0]]!(...(c.slice(1) as number[])));
    if (calls.length === 1 || this.#pool === undefined) return calls.map(own);
    return this.#pool.run(fn, calls, own, parts);
  }

  /** A streaming kernel over n elements of `bytesPerElement`, as element ranges. */
  #elementRanges(n: number, bytesPerElement: number): [number, number][] {
    return splitRange(n, ELEMENT_ALIGN, this.#parts(n * bytesPerElement, splitPolicy.minBytes, Infinity));
  }

  /** `bytes` of 64-aligned scratch (contents undefined), valid until the next kernel-layer call. */
  #reserve(fn: string, bytes: number): number {
    const s = this.#scratch;
    if (s && this.heap.isLive(s) && s.size >= bytes) return s.ptr;
    if (s && this.heap.isLive(s)) this.heap.free(s);
    this.#scratch = undefined;
    this.#scratch = this.heap.alloc(Math.max(bytes, 4096), `${fn} (scratch)`, true);
    return this.#scratch.ptr;
  }

  /** Frees the scratch block (it is allocated again by the next call that needs it). */
  releaseScratch(): void {
    if (this.#scratch && this.heap.isLive(this.#scratch)) this.heap.free(this.#scratch);
    this.#scratch = undefined;
  }

  // ------------------------------------------------------------ scans

  /** Index of the first NaN/±Inf in d (row-major, any dtype), or -1. */
  firstNonFinite(fn: string, d: MatrixDesc): number {
    const p = this.#ptr(fn, d, true, DTYPES);
    const isz = ITEM_BYTES[d.dtype];
    const ranges = this.#elementRanges(d.rows * d.cols, isz);
    const found = this.#run(fn, ranges.map(([e0, e1]) => ['firstNonFinite', p + e0 * isz, e1 - e0, DTYPE_CODE[d.dtype]]));
    const t = found.findIndex((i) => i >= 0);
    return t < 0 ? -1 : ranges[t]![0] + found[t]!;
  }

  /** max |d[i, j]| (any dtype): NaN if any is NaN, +Inf if any is ±Inf. */
  absMax(fn: string, d: MatrixDesc): number {
    const p = this.#ptr(fn, d, true, DTYPES);
    const isz = ITEM_BYTES[d.dtype];
    const ranges = this.#elementRanges(d.rows * d.cols, isz);
    const maxima = this.#run(fn, ranges.map(([e0, e1]) => ['absMax', p + e0 * isz, e1 - e0, DTYPE_CODE[d.dtype]]));
    return maxima.some(Number.isNaN) ? NaN : Math.max(...maxima);
  }

  /** max_i Σ_j |d[i, j]| (any dtype), in f64. */
  maxRowAbsSum(fn: string, d: MatrixDesc): number {
    const p = this.#ptr(fn, d, true, DTYPES);
    const rowBytes = d.cols * ITEM_BYTES[d.dtype];
    const ranges = splitRange(d.rows, 1, this.#parts(d.rows * rowBytes, splitPolicy.minBytes, d.rows));
    // each row's sum is computed whole by one thread; the maximum of maxima is exact
    return Math.max(...this.#run(fn, ranges.map(([r0, r1]) => ['maxRowAbsSum', p + r0 * rowBytes, r1 - r0, d.cols, DTYPE_CODE[d.dtype]])));
  }

  /** dst ← src converted between any two dtypes (same shape): half encodes round to nearest, ties to even. */
  convert(fn: string, dst: MatrixDesc, src: MatrixDesc): void {
    this.#fits(fn, dst.rows === src.rows && dst.cols === src.cols, 'convert', [dst, src]);
    const pd = this.#ptr(fn, dst, true, DTYPES);
    const ps = this.#ptr(fn, src, true, DTYPES);
    const [di, si] = [ITEM_BYTES[dst.dtype], ITEM_BYTES[src.dtype]];
    const ranges = this.#elementRanges(src.rows * src.cols, di + si);
    this.#run(fn, ranges.map(([e0, e1]) => ['convert', pd + e0 * di, DTYPE_CODE[dst.dtype], ps + e0 * si, DTYPE_CODE[src.dtype], e1 - e0]));
  }

  /** Index of the first element whose bits differ between a and b (same shape), or -1. */
  firstDifference(fn: string, a: MatrixDesc, b: MatrixDesc): number {
    const pa = this.#ptr(fn, a);
    const pb = this.#ptr(fn, b);
    const ranges = this.#elementRanges(a.rows * a.cols, 8);
    const found = this.#run(fn, ranges.map(([e0, e1]) => ['firstDifference', pa + e0 * 4, pb + e0 * 4, e1 - e0]));
    const t = found.findIndex((i) => i >= 0);
    return t < 0 ? -1 : ranges[t]![0] + found[t]!;
  }

  /** dst ← src, bytes copied (same shape and dtype). */
  copy(fn: string, dst: MatrixDesc, src: MatrixDesc): void {
    this.#fits(fn, dst.dtype === src.dtype && dst.rows * dst.cols === src.rows * src.cols, 'copy', [dst, src]);
    const pd = this.#ptr(fn, dst, true, DTYPES);
    const ps = this.#ptr(fn, src, true, DTYPES);
    this.heap.copyBytes(pd, ps, src.rows * src.cols * ITEM_BYTES[src.dtype]);
  }

  /** The value of element `index` of d (for error messages). */
  element(fn: string, d: MatrixDesc, index: number): number {
    const p = this.#ptr(fn, d, true, DTYPES);
    if (d.dtype === 'f32') return this.heap.f32At(p + index * 4, 1)[0]!;
    return halfValue(this.heap.u16At(p + index * 2, 1)[0]!, d.dtype);
  }

  // ------------------------------------------------------------ rank-r update

  /**
   * out = [src +] (scaleA·L)·(scaleB·R) through the fused 4×8 kernel (assembly/rank.ts):
   * one pass over out, L and R packed once into scratch and shared by every row job.
   * Returns true when Epilogue.Check found a NaN/±Inf (nothing is written then).
   */
  rankUpdate(fn: string, u: RankUpdate): boolean {
    const n = u.a.rows;
    const r = u.a.cols;
    const cols = u.out.cols;
    const [bRows, bCols] = u.transB ? [u.b.cols, u.b.rows] : [u.b.rows, u.b.cols];
    this.#fits(fn, u.out.rows === n && bRows === r && bCols === cols && (!u.src || (u.src.rows === n && u.src.cols === cols)), 'rankUpdate', [u.out, u.a, u.b]);
    const srcD = u.src ?? u.out;
    const out = this.#ptr(fn, u.out, true, DTYPES);
    const src = this.#ptr(fn, srcD, true, DTYPES);
    let a = this.#ptr(fn, u.a, true, DTYPES);
    let b = this.#ptr(fn, u.b, true, DTYPES);
    const apBytes = ALIGN(packedABytes(n, r));
    const bpBytes = ALIGN(packedBBytes(cols, r));
    const aBytes = u.a.dtype === 'f32' ? 0 : ALIGN(n * r * 4); // half factors are decoded to f32 before packing
    const bBytes = u.b.dtype === 'f32' ? 0 : ALIGN(r * cols * 4);
    const parts = this.#parts(n * cols * r, splitPolicy.minMacs, Math.ceil(n / TILE_ROWS));
    const tmpBytes = ALIGN(TILE_TMP_BYTES);
    // scratch: [packed L | packed R | decoded half L | decoded half R | one edge-tile spill per thread]
    const ap = this.#reserve(fn, apBytes + bpBytes + aBytes + bBytes + parts * tmpBytes);
    const bp = ap + apBytes;
    const tmp = bp + bpBytes + aBytes + bBytes;
    const k = this.#k;
    const colBlock = colBlockFor(r);
    const outDt = DTYPE_CODE[u.out.dtype];
    const srcDt = DTYPE_CODE[srcD.dtype];
    const ldOut = cols * ITEM_BYTES[u.out.dtype];
    const ldSrc = cols * ITEM_BYTES[srcD.dtype];
    this.#call(fn, () => {
      if (aBytes) {
        const a32 = bp + bpBytes;
        k.convert(a32, DTYPE_CODE.f32, a, DTYPE_CODE[u.a.dtype], n * r);
        a = a32;
      }
      if (bBytes) {
        const b32 = bp + bpBytes + aBytes;
        k.convert(b32, DTYPE_CODE.f32, b, DTYPE_CODE[u.b.dtype], r * cols);
        b = b32;
      }
      k.packA(ap, a, r, 0, 0, n, 0, r, u.scaleA);
      k.packB(bp, b, u.transB ? r : cols, u.transB ? 1 : 0, 0, r, 0, cols, u.scaleB ?? 1);
    });
    // row blocks of out (whole 4-row tiles); the packed factors are shared read-only
    const ranges = splitRange(n, TILE_ROWS, parts);
    const hits = this.#run(fn, ranges.map(([r0, r1], t): Call => [
      'rankUpdate', out + r0 * ldOut, src + r0 * ldSrc, ap + (r0 / TILE_ROWS) * r * TILE_ROWS * 4, bp, tmp + t * tmpBytes,
      r1 - r0, cols, r, colBlock, u.epilogue, outDt, srcDt,
    ]), ranges.map(([r0, r1]) => `rows ${r0}–${r1 - 1} of ${u.out.name}`));
    return hits.some((e) => e !== 0);
  }

  // ------------------------------------------------------------ GEMM

  /**
   * C = alpha·op(X)·op(Y) + beta·C (assembly/gemm.ts). A single row times Yᵀ
   * (nn.Linear at batch 1) runs the unpacked matrix-vector kernel. Scratch is
   * sized by the problem, not by the block sizes, so small products need little.
   */
  gemm(fn: string, c: MatrixDesc, x: MatrixDesc, y: MatrixDesc, o: GemmCall = {}): void {
    const transX = o.transX ?? false;
    const transY = o.transY ?? false;
    const alpha = o.alpha ?? 1;
    const beta = o.beta ?? 0;
    const n = c.rows;
    const m = c.cols;
    const kk = transX ? x.rows : x.cols;
    const fits = (transX ? x.cols : x.rows) === n && (transY ? y.rows : y.cols) === m && (transY ? y.cols : y.rows) === kk;
    this.#fits(fn, fits, 'gemm', [c, x, y]);
    const pc = this.#ptr(fn, c);
    const px = this.#ptr(fn, x);
    const py = this.#ptr(fn, y);
    if (n === 1 && transY) {
      // x is one row whichever way it is stored ([1, K] or [K, 1] are the same K floats); split Y's rows
      const ranges = splitRange(m, TILE_ROWS, this.#parts(m * kk, splitPolicy.minMacs, Infinity));
      this.#run(fn, ranges.map(([j0, j1]): Call => ['gemvT', pc + j0 * 4, px, py + j0 * kk * 4, j1 - j0, kk, alpha, beta]));
      return;
    }
    // Split C by columns when it is wide (each thread packs only its part of op(Y): y = x·Wᵀ packs
    // only its rows of W), else by rows. Every C element sees the same K blocks in the same order.
    const byCols = m >= n;
    const parts = this.#parts(n * m * kk, splitPolicy.minMacs, byCols ? Math.ceil(m / TILE_COLS) : Math.ceil(n / TILE_ROWS));
    const kc = Math.min(kk, GEMM_KC);
    const ranges = byCols ? splitRange(m, TILE_COLS, parts) : splitRange(n, TILE_ROWS, parts);
    const widest = Math.max(...ranges.map(([a, b]) => b - a));
    const apBytes = ALIGN(packedABytes(Math.min(byCols ? n : widest, GEMM_MC), kc));
    const bpBytes = ALIGN(packedBBytes(Math.min(byCols ? widest : m, GEMM_NC), kc));
    const perThread = apBytes + bpBytes + ALIGN(TILE_TMP_BYTES);
    const scratch = this.#reserve(fn, parts * perThread);
    const ldx = transX ? n : kk;
    const ldy = transY ? kk : m;
    const tY = transY ? 1 : 0;
    const tX = transX ? 1 : 0;
    this.#run(fn, ranges.map(([a, b], t): Call => {
      const ap = scratch + t * perThread;
      const bp = ap + apBytes;
      const tmp = bp + bpBytes;
      if (byCols) {
        const y0 = py + (transY ? a * kk : a) * 4;
        return ['gemm', pc + a * 4, m, px, ldx, y0, ldy, n, b - a, kk, tX, tY, alpha, beta, ap, bp, tmp];
      }
      const x0 = px + (transX ? a : a * kk) * 4;
      return ['gemm', pc + a * m * 4, m, x0, ldx, py, ldy, b - a, m, kk, tX, tY, alpha, beta, ap, bp, tmp];
    }));
  }

  // ------------------------------------------------------------ adapter extraction

  /**
   * dst = f32(a) − f32(b) (same shape; a, b any dtype, dst f32) and ‖dst‖²_F, as the row sums of
   * squares added in row order: the same value for any split over threads.
   */
  difference(fn: string, dst: MatrixDesc, a: MatrixDesc, b: MatrixDesc): number {
    this.#fits(fn, dst.rows === a.rows && dst.cols === a.cols && a.rows === b.rows && a.cols === b.cols, 'difference', [dst, a, b]);
    const pd = this.#ptr(fn, dst);
    const pa = this.#ptr(fn, a, true, DTYPES);
    const pb = this.#ptr(fn, b, true, DTYPES);
    const rows = dst.rows;
    const cols = dst.cols;
    const sums = this.#reserve(fn, rows * 8);
    const [ai, bi] = [ITEM_BYTES[a.dtype], ITEM_BYTES[b.dtype]];
    const ranges = splitRange(rows, 1, this.#parts(rows * cols * (4 + ai + bi), splitPolicy.minBytes, rows));
    this.#run(fn, ranges.map(([r0, r1]): Call => [
      'difference', pd + r0 * cols * 4, pa + r0 * cols * ai, DTYPE_CODE[a.dtype], pb + r0 * cols * bi, DTYPE_CODE[b.dtype], r1 - r0, cols, sums + r0 * 8,
    ]));
    const rowSums = this.heap.f64At(sums, rows);
    let total = 0;
    for (let i = 0; i < rows; i++) total += rowSums[i]!;
    return total;
  }

  /**
   * The columns of q (column-major f64 [m, l]) made orthonormal in place (assembly/orthonormalize.ts,
   * in kernel scratch). Returns how many columns vanished (left as zeros for the caller to replace).
   */
  orthonormalize(fn: string, q: Float64Array, m: number, l: number): number {
    if (q.length !== m * l) throw new LoRAError(`${fn}: internal error, orthonormalize got ${q.length} values for [${m}, ${l}]`);
    const p = this.#reserve(fn, m * l * 8 + l * 8);
    this.heap.f64At(p, m * l).set(q);
    const vanished = this.#call(fn, () => this.#k.orthonormalize(p, m, l, p + m * l * 8));
    q.set(this.heap.f64At(p, m * l));
    return vanished;
  }

  // ------------------------------------------------------------ layer pieces

  /** y[i, :] = bias for every row of y. */
  broadcastRows(fn: string, y: MatrixDesc, bias: MatrixDesc): void {
    const py = this.#ptr(fn, y);
    const pb = this.#ptr(fn, bias);
    const ranges = splitRange(y.rows, 1, this.#parts(y.rows * y.cols * 4, splitPolicy.minBytes, y.rows));
    this.#run(fn, ranges.map(([r0, r1]): Call => ['broadcastRows', py + r0 * y.cols * 4, pb, r1 - r0, y.cols]));
  }

  /** out[j] = Σ_i g[i, j]. */
  columnSums(fn: string, out: MatrixDesc, g: MatrixDesc): void {
    const po = this.#ptr(fn, out);
    const pg = this.#ptr(fn, g);
    this.#call(fn, () => this.#k.columnSums(po, pg, g.rows, g.cols));
  }

  /** out = max(x, 0) (out may be x). */
  reluForward(fn: string, out: MatrixDesc, x: MatrixDesc): void {
    const po = this.#ptr(fn, out);
    const px = this.#ptr(fn, x);
    const ranges = this.#elementRanges(x.rows * x.cols, 8);
    this.#run(fn, ranges.map(([e0, e1]): Call => ['reluForward', po + e0 * 4, px + e0 * 4, e1 - e0]));
  }

  /** out = g where x > 0, else 0. */
  reluBackward(fn: string, out: MatrixDesc, g: MatrixDesc, x: MatrixDesc): void {
    const po = this.#ptr(fn, out);
    const pg = this.#ptr(fn, g);
    const px = this.#ptr(fn, x);
    const ranges = this.#elementRanges(x.rows * x.cols, 12);
    this.#run(fn, ranges.map(([e0, e1]): Call => ['reluBackward', po + e0 * 4, pg + e0 * 4, px + e0 * 4, e1 - e0]));
  }

  // ------------------------------------------------------------ losses

  /** mean((pred − target)²); grad = 2·(pred − target)/count when given. */
  mseLoss(fn: string, pred: MatrixDesc, target: MatrixDesc, grad?: MatrixDesc): number {
    const pp = this.#ptr(fn, pred);
    const pt = this.#ptr(fn, target);
    const pg = grad ? this.#ptr(fn, grad) : 0;
    return this.#call(fn, () => this.#k.mseLoss(pp, pt, pg, pred.rows * pred.cols));
  }

  /** Stable softmax cross-entropy with integer labels (validated by the caller to lie in [0, cols)). */
  softmaxCrossEntropy(fn: string, logits: MatrixDesc, labels: ArrayLike<number>, grad?: MatrixDesc): { loss: number; correct: number } {
    const pz = this.#ptr(fn, logits);
    const pg = grad ? this.#ptr(fn, grad) : 0;
    const lab = this.#reserve(fn, labels.length * 4 + 4);
    this.heap.i32At(lab, labels.length).set(labels);
    const correctPtr = lab + labels.length * 4;
    const loss = this.#call(fn, () => this.#k.softmaxCrossEntropy(pz, lab, pg, logits.rows, logits.cols, correctPtr));
    return { loss, correct: this.heap.i32At(correctPtr, 1)[0]! };
  }

  // ------------------------------------------------------------ optimizers

  sgdStep(fn: string, p: MatrixDesc, g: MatrixDesc, v: MatrixDesc, lr: number, momentum: number, weightDecay: number, nesterov: boolean): void {
    const pp = this.#ptr(fn, p);
    const pg = this.#ptr(fn, g);
    const pv = this.#ptr(fn, v);
    const ranges = this.#elementRanges(p.rows * p.cols, 20);
    this.#run(fn, ranges.map(([e0, e1]): Call => [
      'sgdStep', pp + e0 * 4, pg + e0 * 4, pv + e0 * 4, e1 - e0, lr, momentum, weightDecay, nesterov ? 1 : 0,
    ]));
  }

  adamwStep(
    fn: string, p: MatrixDesc, g: MatrixDesc, m: MatrixDesc, v: MatrixDesc,
    lr: number, beta1: number, beta2: number, eps: number, weightDecay: number, bc1: number, bc2: number,
  ): void {
    const pp = this.#ptr(fn, p);
    const pg = this.#ptr(fn, g);
    const pm = this.#ptr(fn, m);
    const pv = this.#ptr(fn, v);
    const ranges = this.#elementRanges(p.rows * p.cols, 28);
    this.#run(fn, ranges.map(([e0, e1]): Call => [
      'adamwStep', pp + e0 * 4, pg + e0 * 4, pm + e0 * 4, pv + e0 * 4, e1 - e0, lr, beta1, beta2, eps, weightDecay, bc1, bc2,
    ]));
  }
}
