/**
 * The wasm exports, typed, and the constants mirrored from assembly/.
 *
 * Only src/kernel/ calls these functions (by name, through KernelCall tuples). Each signature here is
 * checked against the bindings `asc` generates (build/lora-baseline.d.ts) by
 * test/kernel.test.ts: same names, same parameter names and counts, same
 * return kinds.
 */

/** What a finished 4×8 tile does with its output. Twin: EPILOGUE_* in assembly/tile.ts. */
export const enum Epilogue {
  /** out = acc */
  Store = 0,
  /** out = src + acc (src may be out) */
  Add = 1,
  /** write nothing; report whether any src + acc is NaN/±Inf */
  Check = 2,
  /** out = beta·src + acc */
  Axpby = 3,
}

/** Element type codes the kernels take. Twin: DTYPE_* in assembly/convert.ts. */
export const DTYPE_CODE = { f32: 0, f16: 1, bf16: 2 } as const;

/** Tile shape, and so the packed block sizes. Twin: TILE_ROWS/TILE_COLS in assembly/tile.ts. */
export const TILE_ROWS = 4;
export const TILE_COLS = 8;

/** GEMM block sizes. Twin: GEMM_MC/KC/NC in assembly/gemm.ts. */
export const GEMM_MC = 64;
export const GEMM_KC = 256;
export const GEMM_NC = 256;

export interface Kernels {
  heapBase(): number;
  buildIsRelaxed(): number;
  packA(ap: number, x: number, ld: number, trans: number, i0: number, rows: number, p0: number, kc: number, alpha: number): void;
  packB(bp: number, y: number, ld: number, trans: number, p0: number, kc: number, j0: number, cols: number, beta: number): void;
  firstNonFinite(x: number, n: number, dt: number): number;
  absMax(x: number, n: number, dt: number): number;
  maxRowAbsSum(x: number, rows: number, cols: number, dt: number): number;
  convert(dst: number, dstDt: number, src: number, srcDt: number, n: number): void;
  firstDifference(a: number, b: number, n: number): number;
  rankUpdate(
    out: number, w0: number, ap: number, bp: number, tmp: number,
    dOut: number, dIn: number, r: number, colBlock: number, epilogue: number, outDt: number, srcDt: number,
  ): number;
  gemm(
    c: number, ldc: number, x: number, ldx: number, y: number, ldy: number, n: number, m: number, k: number, transX: number, transY: number,
    alpha: number, beta: number, ap: number, bp: number, tmp: number,
  ): void;
  gemvT(c: number, x: number, y: number, m: number, k: number, alpha: number, beta: number): void;
  broadcastRows(y: number, bias: number, n: number, m: number): void;
  columnSums(out: number, g: number, n: number, m: number): void;
  reluForward(out: number, x: number, n: number): void;
  reluBackward(out: number, g: number, x: number, n: number): void;
  mseLoss(pred: number, target: number, grad: number, count: number): number;
  softmaxCrossEntropy(logits: number, labels: number, grad: number, n: number, c: number, correct: number): number;
  sgdStep(p: number, g: number, v: number, n: number, lr: number, momentum: number, weightDecay: number, nesterov: number): void;
  adamwStep(
    p: number, g: number, m: number, v: number, n: number,
    lr: number, beta1: number, beta2: number, eps: number, weightDecay: number, bc1: number, bc2: number,
  ): void;
  difference(dst: number, a: number, aDt: number, b: number, bDt: number, rows: number, cols: number, rowSums: number): void;
  orthonormalize(q: number, m: number, l: number, dots: number): number;
  quantize(dst: number, src: number, n: number, type: number, tmp: number): number;
  dequantize(dst: number, src: number, n: number, type: number): number;
  mergeExact(w: number, a: number, b: number, rows: number, cols: number, r: number, s: number): void;
}

/** A kernel's name. */
export type KernelName = keyof Kernels;
/** The arguments of kernel K, as a tuple. */
export type KernelArgs<K extends KernelName = KernelName> = Parameters<Kernels[K]>;
/**
 * One kernel call as data: `[name, ...arguments]`, derived from Kernels, so a wrong name or a
 * missing or extra argument does not compile. The kernel layer builds these, runs the first of a
 * split on the calling thread (invoke) and posts the others to the worker pool.
 */
export type KernelCall = { readonly [K in KernelName]: readonly [K, ...KernelArgs<K>] }[KernelName];

/** Kernels seen through their argument tuples: the form in which `invoke` can call any of them by name. */
type ByName = { readonly [K in KernelName]: (...args: KernelArgs<K>) => number | void };

/** Runs one kernel call on this thread; a kernel that returns nothing gives 0 (as in a worker). */
export function invoke(kernels: Kernels, call: KernelCall): number {
  return run(kernels, call[0], call.slice(1) as KernelArgs) ?? 0;
}
function run<K extends KernelName>(kernels: ByName, name: K, args: KernelArgs<K>): number | void {
  return kernels[name](...args);
}

/** Every function export init() requires of a module before it calls it a lora-wasm module. */
export const KERNEL_NAMES: readonly (keyof Kernels)[] = [
  'heapBase', 'buildIsRelaxed', 'packA', 'packB', 'firstNonFinite', 'absMax', 'maxRowAbsSum', 'convert', 'firstDifference',
  'rankUpdate', 'gemm', 'gemvT', 'broadcastRows', 'columnSums', 'reluForward', 'reluBackward', 'mseLoss',
  'softmaxCrossEntropy', 'sgdStep', 'adamwStep', 'difference', 'orthonormalize',
  'quantize', 'dequantize', 'mergeExact',
];

/** Bytes of packed A for `rows` rows and kc: whole 4-row blocks. */
export const packedABytes = (rows: number, kc: number): number => Math.ceil(rows / TILE_ROWS) * TILE_ROWS * kc * 4;
/** Bytes of packed B for `cols` columns and kc: whole 8-column strips. */
export const packedBBytes = (cols: number, kc: number): number => Math.ceil(cols / TILE_COLS) * TILE_COLS * kc * 4;
/** Bytes of the edge-tile spill area. */
export const TILE_TMP_BYTES = TILE_ROWS * TILE_COLS * 4;

/** Per-thread scratch of the ggml block quantizers (assembly/quants-k.ts). Twin: QUANT_TMP_BYTES in assembly/quant-math.ts. */
export const QUANT_TMP_BYTES = 1024;
