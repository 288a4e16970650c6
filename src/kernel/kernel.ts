/**
 * The kernel layer: the ONLY code that calls the wasm exports.
 *
 * Everything above it (operations, layers, optimizers, adapters) hands it
 * descriptors (descriptor.ts). Each method here says which kernel it runs and
 * how; the work common to all of them lives in one small module each:
 *   guards.ts     every descriptor is owned by this instance, live, of a dtype
 *                 the kernel takes and inside its block; a wasm trap becomes a
 *                 LoRAError (a trap is a bug: the checks should prevent it);
 *   scratch.ts    packed panels and spills in one reused block, laid out per
 *                 thread, so a training loop allocates nothing per step;
 *   scheduler.ts  calls split over row (or column, or element) ranges and run
 *                 on the worker pool when the problem is big enough, with
 *                 bit-identical results for any thread count.
 * Kernel calls are KernelCall tuples (kernels.ts), checked by the compiler
 * against the Kernels interface.
 *
 * Validation of user arguments (shapes against each other, options) is the
 * operations' job (src/ops/).
 */
import { LoRAError } from '../errors.js';
import { halfValue } from '../memory/half.js';
import type { WasmHeap } from '../memory/heap.js';
import { DTYPES, type DType } from '../memory/matrix.js';
import type { WorkerPool } from '../pool/pool.js';
import { ITEM_BYTES } from '../memory/dtype.js';
import type { MatrixDesc } from './descriptor.js';
import { F32, fits, pointer } from './guards.js';
import {
  DTYPE_CODE, Epilogue, GEMM_KC, GEMM_MC, GEMM_NC, type KernelCall, type Kernels, TILE_COLS, TILE_ROWS, TILE_TMP_BYTES, packedABytes,
  packedBBytes, QUANT_TMP_BYTES,
} from './kernels.js';
import { Scheduler, type Split, firstIndex, splitPolicy, splitRange } from './scheduler.js';
import { Scratch } from './scratch.js';


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
  return { relaxed: kernels.buildIsRelaxed() === 1, heapBase: kernels.heapBase() >>> 0 };
}

export class KernelLayer {
  readonly heap: WasmHeap;
  readonly #sched: Scheduler;
  readonly #scratch: Scratch;

  constructor(heap: WasmHeap, kernels: Kernels, pool?: WorkerPool) {
    this.heap = heap;
    this.#sched = new Scheduler(kernels, pool);
    this.#scratch = new Scratch(heap);
  }

  /** Threads a call may use now: the calling thread plus the workers that are ready. */
  get threads(): number {
    return this.#sched.threads;
  }

  /** The pool (undefined with threads: 1 or after endPool). */
  get pool(): WorkerPool | undefined {
    return this.#sched.pool;
  }

  /** Ends the worker pool; later calls run on the calling thread. */
  endPool(): void {
    this.#sched.endPool();
  }

  /** Frees the scratch block (it is allocated again by the next call that needs it). */
  releaseScratch(): void {
    this.#scratch.release();
  }

  /** A checked descriptor's byte pointer (guards.ts). */
  #ptr(fn: string, d: MatrixDesc, dtypes: readonly DType[] = F32): number {
    return pointer(this.heap, fn, d, true, dtypes);
  }

  // ------------------------------------------------------------ scans and conversion (streaming kernels)

  /** Index of the first NaN/±Inf in d (row-major, any dtype), or -1. */
  firstNonFinite(fn: string, d: MatrixDesc): number {
    return firstIndex(this.#scan(fn, 'firstNonFinite', d));
  }

  /** max |d[i, j]| (any dtype): NaN if any is NaN, +Inf if any is ±Inf. */
  absMax(fn: string, d: MatrixDesc): number {
    const maxima = this.#scan(fn, 'absMax', d).results;
    return maxima.some(Number.isNaN) ? NaN : Math.max(...maxima);
  }

  /** A scan kernel (x, n, dtype) over every element of d, any dtype. */
  #scan(fn: string, kernel: 'firstNonFinite' | 'absMax', d: MatrixDesc): Split {
    const p = this.#ptr(fn, d, DTYPES);
    const isz = ITEM_BYTES[d.dtype];
    const dt = DTYPE_CODE[d.dtype];
    return this.#sched.stream(fn, d.rows * d.cols, isz, (e0, n) => [kernel, p + e0 * isz, n, dt]);
  }

  /** max_i Σ_j |d[i, j]| (any dtype), in f64. */
  maxRowAbsSum(fn: string, d: MatrixDesc): number {
    const p = this.#ptr(fn, d, DTYPES);
    const rowBytes = d.cols * ITEM_BYTES[d.dtype];
    const ranges = splitRange(d.rows, 1, this.#sched.parts(d.rows * rowBytes, splitPolicy.minBytes, d.rows));
    // each row's sum is computed whole by one thread; the maximum of maxima is exact
    return Math.max(...this.#sched.run(fn, ranges.map(([r0, r1]): KernelCall => ['maxRowAbsSum', p + r0 * rowBytes, r1 - r0, d.cols, DTYPE_CODE[d.dtype]])));
  }

  /** dst ← src converted between any two dtypes (same shape): half encodes round to nearest, ties to even. */
  convert(fn: string, dst: MatrixDesc, src: MatrixDesc): void {
    fits(fn, dst.rows === src.rows && dst.cols === src.cols, 'convert', [dst, src]);
    const pd = this.#ptr(fn, dst, DTYPES);
    const ps = this.#ptr(fn, src, DTYPES);
    const [di, si] = [ITEM_BYTES[dst.dtype], ITEM_BYTES[src.dtype]];
    const [dd, sd] = [DTYPE_CODE[dst.dtype], DTYPE_CODE[src.dtype]];
    this.#sched.stream(fn, src.rows * src.cols, di + si, (e0, n) => ['convert', pd + e0 * di, dd, ps + e0 * si, sd, n]);
  }

  /** Index of the first element whose bits differ between a and b (same shape), or -1. */
  firstDifference(fn: string, a: MatrixDesc, b: MatrixDesc): number {
    const pa = this.#ptr(fn, a);
    const pb = this.#ptr(fn, b);
    return firstIndex(this.#sched.stream(fn, a.rows * a.cols, 8, (e0, n) => ['firstDifference', pa + e0 * 4, pb + e0 * 4, n]));
  }

  /** dst ← src, bytes copied (same shape and dtype). */
  copy(fn: string, dst: MatrixDesc, src: MatrixDesc): void {
    fits(fn, dst.dtype === src.dtype && dst.rows * dst.cols === src.rows * src.cols, 'copy', [dst, src]);
    const pd = this.#ptr(fn, dst, DTYPES);
    const ps = this.#ptr(fn, src, DTYPES);
    this.heap.copyBytes(pd, ps, src.rows * src.cols * ITEM_BYTES[src.dtype]);
  }

  /** The value of element `index` of d (for error messages). */
  element(fn: string, d: MatrixDesc, index: number): number {
    const p = this.#ptr(fn, d, DTYPES);
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
    fits(fn, u.out.rows === n && bRows === r && bCols === cols && (!u.src || (u.src.rows === n && u.src.cols === cols)), 'rankUpdate', [u.out, u.a, u.b]);
    const srcD = u.src ?? u.out;
    const out = this.#ptr(fn, u.out, DTYPES);
    const src = this.#ptr(fn, srcD, DTYPES);
    let a = this.#ptr(fn, u.a, DTYPES);
    let b = this.#ptr(fn, u.b, DTYPES);
    const parts = this.#sched.parts(n * cols * r, splitPolicy.minMacs, Math.ceil(n / TILE_ROWS));
    // [packed L | packed R | L decoded to f32 | R decoded to f32 | one edge-tile spill per thread]
    const halfA = u.a.dtype === 'f32' ? 0 : n * r * 4;
    const halfB = u.b.dtype === 'f32' ? 0 : r * cols * 4;
    const { shared: [ap, bp, a32, b32], threads } = this.#scratch.layout(
      fn, [packedABytes(n, r), packedBBytes(cols, r), halfA, halfB], [TILE_TMP_BYTES], parts,
    );
    this.#sched.direct(fn, (k) => {
      if (halfA) {
        k.convert(a32, DTYPE_CODE.f32, a, DTYPE_CODE[u.a.dtype], n * r);
        a = a32;
      }
      if (halfB) {
        k.convert(b32, DTYPE_CODE.f32, b, DTYPE_CODE[u.b.dtype], r * cols);
        b = b32;
      }
      k.packA(ap, a, r, 0, 0, n, 0, r, u.scaleA);
      k.packB(bp, b, u.transB ? r : cols, u.transB ? 1 : 0, 0, r, 0, cols, u.scaleB ?? 1);
    });
    // row blocks of out (whole 4-row tiles); the packed factors are shared read-only
    const colBlock = colBlockFor(r);
    const [outDt, srcDt] = [DTYPE_CODE[u.out.dtype], DTYPE_CODE[srcD.dtype]];
    const ldOut = cols * ITEM_BYTES[u.out.dtype];
    const ldSrc = cols * ITEM_BYTES[srcD.dtype];
    const ranges = splitRange(n, TILE_ROWS, parts);
    const hits = this.#sched.run(fn, ranges.map(([r0, r1], t): KernelCall => [
      'rankUpdate', out + r0 * ldOut, src + r0 * ldSrc, ap + (r0 / TILE_ROWS) * r * TILE_ROWS * 4, bp, threads[t]![0],
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
    fits(fn, (transX ? x.cols : x.rows) === n && (transY ? y.rows : y.cols) === m && (transY ? y.cols : y.rows) === kk, 'gemm', [c, x, y]);
    const pc = this.#ptr(fn, c);
    const px = this.#ptr(fn, x);
    const py = this.#ptr(fn, y);
    if (n === 1 && transY) {
      // x is one row whichever way it is stored ([1, K] or [K, 1] are the same K floats); split Y's rows
      const ranges = splitRange(m, TILE_ROWS, this.#sched.parts(m * kk, splitPolicy.minMacs, Infinity));
      this.#sched.run(fn, ranges.map(([j0, j1]): KernelCall => ['gemvT', pc + j0 * 4, px, py + j0 * kk * 4, j1 - j0, kk, alpha, beta]));
      return;
    }
    // Split C by columns when it is wide (each thread packs only its part of op(Y): y = x·Wᵀ packs
    // only its rows of W), else by rows. Every C element sees the same K blocks in the same order.
    const byCols = m >= n;
    const parts = this.#sched.parts(n * m * kk, splitPolicy.minMacs, byCols ? Math.ceil(m / TILE_COLS) : Math.ceil(n / TILE_ROWS));
    const kc = Math.min(kk, GEMM_KC);
    const ranges = byCols ? splitRange(m, TILE_COLS, parts) : splitRange(n, TILE_ROWS, parts);
    const widest = Math.max(...ranges.map(([a, b]) => b - a));
    // per thread: [packed X block | packed Y block | edge-tile spill]
    const { threads } = this.#scratch.layout(fn, [], [
      packedABytes(Math.min(byCols ? n : widest, GEMM_MC), kc), packedBBytes(Math.min(byCols ? widest : m, GEMM_NC), kc), TILE_TMP_BYTES,
    ], parts);
    const ldx = transX ? n : kk;
    const ldy = transY ? kk : m;
    const tY = transY ? 1 : 0;
    const tX = transX ? 1 : 0;
    this.#sched.run(fn, ranges.map(([a, b], t): KernelCall => {
      const [ap, bp, tmp] = threads[t]!;
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
    fits(fn, dst.rows === a.rows && dst.cols === a.cols && a.rows === b.rows && a.cols === b.cols, 'difference', [dst, a, b]);
    const pd = this.#ptr(fn, dst);
    const pa = this.#ptr(fn, a, DTYPES);
    const pb = this.#ptr(fn, b, DTYPES);
    const rows = dst.rows;
    const cols = dst.cols;
    const sums = this.#scratch.reserve(fn, rows * 8);
    const [ai, bi] = [ITEM_BYTES[a.dtype], ITEM_BYTES[b.dtype]];
    const ranges = splitRange(rows, 1, this.#sched.parts(rows * cols * (4 + ai + bi), splitPolicy.minBytes, rows));
    this.#sched.run(fn, ranges.map(([r0, r1]): KernelCall => [
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
    const p = this.#scratch.reserve(fn, m * l * 8 + l * 8);
    this.heap.f64At(p, m * l).set(q);
    const vanished = this.#sched.direct(fn, (k) => k.orthonormalize(p, m, l, p + m * l * 8));
    q.set(this.heap.f64At(p, m * l));
    return vanished;
  }

  // ------------------------------------------------------------ layer pieces

  /** y[i, :] = bias for every row of y. */
  broadcastRows(fn: string, y: MatrixDesc, bias: MatrixDesc): void {
    const py = this.#ptr(fn, y);
    const pb = this.#ptr(fn, bias);
    const ranges = splitRange(y.rows, 1, this.#sched.parts(y.rows * y.cols * 4, splitPolicy.minBytes, y.rows));
    this.#sched.run(fn, ranges.map(([r0, r1]): KernelCall => ['broadcastRows', py + r0 * y.cols * 4, pb, r1 - r0, y.cols]));
  }

  /** out[j] = Σ_i g[i, j]. */
  columnSums(fn: string, out: MatrixDesc, g: MatrixDesc): void {
    const po = this.#ptr(fn, out);
    const pg = this.#ptr(fn, g);
    this.#sched.direct(fn, (k) => k.columnSums(po, pg, g.rows, g.cols));
  }

  /** out = max(x, 0) (out may be x). */
  reluForward(fn: string, out: MatrixDesc, x: MatrixDesc): void {
    const po = this.#ptr(fn, out);
    const px = this.#ptr(fn, x);
    this.#sched.stream(fn, x.rows * x.cols, 8, (e0, n) => ['reluForward', po + e0 * 4, px + e0 * 4, n]);
  }

  /** out = g where x > 0, else 0. */
  reluBackward(fn: string, out: MatrixDesc, g: MatrixDesc, x: MatrixDesc): void {
    const po = this.#ptr(fn, out);
    const pg = this.#ptr(fn, g);
    const px = this.#ptr(fn, x);
    this.#sched.stream(fn, x.rows * x.cols, 12, (e0, n) => ['reluBackward', po + e0 * 4, pg + e0 * 4, px + e0 * 4, n]);
  }

  // ------------------------------------------------------------ losses

  /** mean((pred − target)²); grad = 2·(pred − target)/count when given. */
  mseLoss(fn: string, pred: MatrixDesc, target: MatrixDesc, grad?: MatrixDesc): number {
    const pp = this.#ptr(fn, pred);
    const pt = this.#ptr(fn, target);
    const pg = grad ? this.#ptr(fn, grad) : 0;
    return this.#sched.direct(fn, (k) => k.mseLoss(pp, pt, pg, pred.rows * pred.cols));
  }

  /** Stable softmax cross-entropy with integer labels (validated by the caller to lie in [0, cols)). */
  softmaxCrossEntropy(fn: string, logits: MatrixDesc, labels: ArrayLike<number>, grad?: MatrixDesc): { loss: number; correct: number } {
    const pz = this.#ptr(fn, logits);
    const pg = grad ? this.#ptr(fn, grad) : 0;
    const lab = this.#scratch.reserve(fn, labels.length * 4 + 4);
    this.heap.i32At(lab, labels.length).set(labels);
    const correctPtr = lab + labels.length * 4;
    const loss = this.#sched.direct(fn, (k) => k.softmaxCrossEntropy(pz, lab, pg, logits.rows, logits.cols, correctPtr));
    return { loss, correct: this.heap.i32At(correctPtr, 1)[0]! };
  }

  // ------------------------------------------------------------ optimizers (streaming kernels)

  sgdStep(fn: string, p: MatrixDesc, g: MatrixDesc, v: MatrixDesc, lr: number, momentum: number, weightDecay: number, nesterov: boolean): void {
    const pp = this.#ptr(fn, p);
    const pg = this.#ptr(fn, g);
    const pv = this.#ptr(fn, v);
    const nest = nesterov ? 1 : 0;
    // bytes per element: p and v read and written, g read
    this.#sched.stream(fn, p.rows * p.cols, 20, (e0, n) => [
      'sgdStep', pp + e0 * 4, pg + e0 * 4, pv + e0 * 4, n, lr, momentum, weightDecay, nest,
    ]);
  }

  adamwStep(
    fn: string, p: MatrixDesc, g: MatrixDesc, m: MatrixDesc, v: MatrixDesc,
    lr: number, beta1: number, beta2: number, eps: number, weightDecay: number, bc1: number, bc2: number,
  ): void {
    const pp = this.#ptr(fn, p);
    const pg = this.#ptr(fn, g);
    const pm = this.#ptr(fn, m);
    const pv = this.#ptr(fn, v);
    // bytes per element: p, m and v read and written, g read
    this.#sched.stream(fn, p.rows * p.cols, 28, (e0, n) => [
      'adamwStep', pp + e0 * 4, pg + e0 * 4, pm + e0 * 4, pv + e0 * 4, n, lr, beta1, beta2, eps, weightDecay, bc1, bc2,
    ]);
  }

  // ------------------------------------------------------------ the merge in float64 (GGUF, quantized outputs)

  /**
   * W ← f32(f64(W) + s·A·B) with the sum over k in float64 (assembly/merge-exact.ts): W [rows, cols],
   * A [rows, r], B [r, cols], all f32 at raw wasm pointers the caller allocated; s a float64. For
   * tensors re-quantized after the merge, whose quantizers' searches amplify a last-bit difference.
   * Split over threads by rows (the bits do not depend on the split).
   */
  mergeExact(fn: string, w: number, a: number, b: number, rows: number, cols: number, r: number, s: number): void {
    const parts = this.#sched.parts(rows * cols * r, splitPolicy.minMacs, rows);
    this.#sched.run(fn, splitRange(rows, 1, parts).map(([i0, i1]): KernelCall => ['mergeExact', w + i0 * cols * 4, a + i0 * r * 4, b, i1 - i0, cols, r, s]));
  }

  // ------------------------------------------------------------ ggml blocks (src/gguf/quant.ts)

  /**
   * ggml block (de)quantization between raw wasm pointers (assembly/quants.ts, quants-k.ts): n f32
   * values at src → ggml blocks of ggml_type `type` at dst (quantize), or the reverse (dequantize).
   * F32, F16 and BF16 (ggml ids 0, 1, 30) go through the convert kernel. The caller (src/gguf/quant.ts)
   * has checked the type, that n is whole blocks and that both ranges lie in wasm memory. Split over
   * threads by whole blocks (every block is computed alone, so any split gives the same bytes);
   * `cost` is the work per f32 value in streamed bytes (a quantizer's search weighs more than a copy).
   */
  ggmlBlocks(fn: string, op: 'quantize' | 'dequantize', type: number, dst: number, src: number, n: number, blockValues: number, blockBytes: number, cost: number): void {
    const blocks = n / blockValues;
    const parts = this.#sched.parts(n * cost, splitPolicy.minBytes, blocks);
    const ranges = splitRange(blocks, 1, parts);
    const half = type === 1 ? DTYPE_CODE.f16 : type === 30 ? DTYPE_CODE.bf16 : type === 0 ? DTYPE_CODE.f32 : -1;
    const { threads } = this.#scratch.layout(fn, [], [half >= 0 || op === 'dequantize' ? 0 : QUANT_TMP_BYTES], ranges.length);
    const results = this.#sched.run(fn, ranges.map(([b0, b1], t): KernelCall => {
      const [f32At, blockAt, count] = [b0 * blockValues * 4, b0 * blockBytes, (b1 - b0) * blockValues];
      if (half >= 0) {
        return op === 'quantize'
          ? ['convert', dst + blockAt, half, src + f32At, DTYPE_CODE.f32, count]
          : ['convert', dst + f32At, DTYPE_CODE.f32, src + blockAt, half, count];
      }
      return op === 'quantize'
        ? ['quantize', dst + blockAt, src + f32At, count, type, threads[t]![0]]
        : ['dequantize', dst + f32At, src + blockAt, count, type];
    }));
    if (results.some((r) => r < 0)) throw new LoRAError(`${fn}: internal error, the ${op} kernel has no ggml type ${type}`);
  }
}
