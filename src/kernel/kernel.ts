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
 *   3. runs the kernel as jobs over row ranges (`#rows`): today one job on
 *      the calling thread, and the one place the worker pool will split;
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

export class KernelLayer {
  readonly heap: WasmHeap;
  readonly #k: Kernels;
  #scratch: Block | undefined;

  constructor(heap: WasmHeap, kernels: Kernels) {
    this.heap = heap;
    this.#k = kernels;
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

  /**
   * Splits [0, rows) into jobs of whole `align`-row blocks and runs `job(r0, r1)`
   * on each. One job on the calling thread today; the worker pool splits here.
   */
  #rows(rows: number, _align: number, job: (r0: number, r1: number) => void): void {
    job(0, rows);
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
    return this.#call(fn, () => this.#k.firstNonFinite(p, d.rows * d.cols, DTYPE_CODE[d.dtype]));
  }

  /** max |d[i, j]| (any dtype): NaN if any is NaN, +Inf if any is ±Inf. */
  absMax(fn: string, d: MatrixDesc): number {
    const p = this.#ptr(fn, d, true, DTYPES);
    return this.#call(fn, () => this.#k.absMax(p, d.rows * d.cols, DTYPE_CODE[d.dtype]));
  }

  /** max_i Σ_j |d[i, j]| (any dtype), in f64. */
  maxRowAbsSum(fn: string, d: MatrixDesc): number {
    const p = this.#ptr(fn, d, true, DTYPES);
    return this.#call(fn, () => this.#k.maxRowAbsSum(p, d.rows, d.cols, DTYPE_CODE[d.dtype]));
  }

  /** dst ← src converted between any two dtypes (same shape): half encodes round to nearest, ties to even. */
  convert(fn: string, dst: MatrixDesc, src: MatrixDesc): void {
    this.#fits(fn, dst.rows === src.rows && dst.cols === src.cols, 'convert', [dst, src]);
    const pd = this.#ptr(fn, dst, true, DTYPES);
    const ps = this.#ptr(fn, src, true, DTYPES);
    this.#call(fn, () => this.#k.convert(pd, DTYPE_CODE[dst.dtype], ps, DTYPE_CODE[src.dtype], src.rows * src.cols));
  }

  /** Index of the first element whose bits differ between a and b (same shape), or -1. */
  firstDifference(fn: string, a: MatrixDesc, b: MatrixDesc): number {
    const pa = this.#ptr(fn, a);
    const pb = this.#ptr(fn, b);
    return this.#call(fn, () => this.#k.firstDifference(pa, pb, a.rows * a.cols));
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
    const ap = this.#reserve(fn, apBytes + bpBytes + TILE_TMP_BYTES + aBytes + bBytes);
    const bp = ap + apBytes;
    const tmp = bp + bpBytes;
    const k = this.#k;
    const colBlock = colBlockFor(r);
    const outDt = DTYPE_CODE[u.out.dtype];
    const srcDt = DTYPE_CODE[srcD.dtype];
    const ldOut = cols * ITEM_BYTES[u.out.dtype];
    const ldSrc = cols * ITEM_BYTES[srcD.dtype];
    let hit = false;
    this.#call(fn, () => {
      if (aBytes) {
        const a32 = tmp + TILE_TMP_BYTES;
        k.convert(a32, DTYPE_CODE.f32, a, DTYPE_CODE[u.a.dtype], n * r);
        a = a32;
      }
      if (bBytes) {
        const b32 = tmp + TILE_TMP_BYTES + aBytes;
        k.convert(b32, DTYPE_CODE.f32, b, DTYPE_CODE[u.b.dtype], r * cols);
        b = b32;
      }
      k.packA(ap, a, r, 0, 0, n, 0, r, u.scaleA);
      k.packB(bp, b, u.transB ? r : cols, u.transB ? 1 : 0, 0, r, 0, cols, u.scaleB ?? 1);
      this.#rows(n, TILE_ROWS, (r0, r1) => {
        const apRows = ap + (r0 / TILE_ROWS) * r * TILE_ROWS * 4;
        const e = k.rankUpdate(out + r0 * ldOut, src + r0 * ldSrc, apRows, bp, tmp, r1 - r0, cols, r, colBlock, u.epilogue, outDt, srcDt);
        if (e !== 0) hit = true;
      });
    });
    return hit;
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
    const k = this.#k;
    if (n === 1 && transY) {
      // x is one row whichever way it is stored ([1, K] or [K, 1] are the same K floats)
      this.#call(fn, () => k.gemvT(pc, px, py, m, kk, alpha, beta));
      return;
    }
    const kc = Math.min(kk, GEMM_KC);
    const apBytes = packedABytes(Math.min(n, GEMM_MC), kc);
    const bpBytes = packedBBytes(Math.min(m, GEMM_NC), kc);
    const ap = this.#reserve(fn, apBytes + bpBytes + TILE_TMP_BYTES);
    const bp = ap + apBytes;
    const tmp = bp + bpBytes;
    this.#call(fn, () => {
      if (transX) {
        k.gemm(pc, px, py, n, m, kk, 1, transY ? 1 : 0, alpha, beta, ap, bp, tmp);
        return;
      }
      this.#rows(n, TILE_ROWS, (r0, r1) => {
        k.gemm(pc + r0 * m * 4, px + r0 * kk * 4, py, r1 - r0, m, kk, 0, transY ? 1 : 0, alpha, beta, ap, bp, tmp);
      });
    });
  }

  // ------------------------------------------------------------ layer pieces

  /** y[i, :] = bias for every row of y. */
  broadcastRows(fn: string, y: MatrixDesc, bias: MatrixDesc): void {
    const py = this.#ptr(fn, y);
    const pb = this.#ptr(fn, bias);
    this.#call(fn, () => this.#k.broadcastRows(py, pb, y.rows, y.cols));
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
    this.#call(fn, () => this.#k.reluForward(po, px, x.rows * x.cols));
  }

  /** out = g where x > 0, else 0. */
  reluBackward(fn: string, out: MatrixDesc, g: MatrixDesc, x: MatrixDesc): void {
    const po = this.#ptr(fn, out);
    const pg = this.#ptr(fn, g);
    const px = this.#ptr(fn, x);
    this.#call(fn, () => this.#k.reluBackward(po, pg, px, x.rows * x.cols));
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
    this.#call(fn, () => this.#k.sgdStep(pp, pg, pv, p.rows * p.cols, lr, momentum, weightDecay, nesterov ? 1 : 0));
  }

  adamwStep(
    fn: string, p: MatrixDesc, g: MatrixDesc, m: MatrixDesc, v: MatrixDesc,
    lr: number, beta1: number, beta2: number, eps: number, weightDecay: number, bc1: number, bc2: number,
  ): void {
    const pp = this.#ptr(fn, p);
    const pg = this.#ptr(fn, g);
    const pm = this.#ptr(fn, m);
    const pv = this.#ptr(fn, v);
    this.#call(fn, () => this.#k.adamwStep(pp, pg, pm, pv, p.rows * p.cols, lr, beta1, beta2, eps, weightDecay, bc1, bc2));
  }
}
