/**
 * LoRAWasm: one loaded module with its own wasm memory. Get it from init().
 * The facade over every public operation: each method validates its
 * arguments (src/ops/, src/nn/) before the kernel layer runs anything.
 */
import type { DType, HalfDType, Matrix } from './memory/matrix.js';
import type { MemoryStats } from './memory/heap.js';
import { type MatrixOptions, createMatrix } from './ops/create.js';
import { convert } from './ops/convert.js';
import { type GemmOptions, gemm, matmul } from './ops/gemm.js';
import { type CrossEntropyResult, mseLoss, softmaxCrossEntropy } from './ops/loss.js';
import { type DeltaOptions, type MergeOptions, type ScaleOptions, delta, merge, mergeInto, unmerge } from './ops/merge.js';
import { type AnyMatrixInput, type MatrixInput, optionsObject, rejectUnknownKeys } from './ops/operands.js';
import type { Layer, Parameter } from './nn/layer.js';
import { Linear, type LinearOptions } from './nn/linear.js';
import { LoRALinear, type LoRALinearOptions } from './nn/lora-linear.js';
import { AdamW, type AdamWOptions, SGD, type SGDOptions } from './nn/optim.js';
import { ReLU } from './nn/relu.js';
import { Sequential } from './nn/sequential.js';
import type { WorkerPool } from './pool/pool.js';
import type { Build, Engine } from './runtime/engine.js';
import { LoRATypeError, describeValue } from './errors.js';
import type { Adapter } from './adapters/adapter.js';
import { readAdapter } from './adapters/load.js';
import { type SaveAdapterOptions, saveAdapter } from './adapters/save.js';
import { type CombineOptions, type WeightedAdapter, combineAdapters } from './adapters/combine.js';
import { type ExtractOptions, type TruncateOptions, type TruncateResult, extractAdapter, resizeAdapter } from './adapters/extract.js';
import { type DoraToLoraOptions, doraToLora } from './adapters/dora.js';
import { AdapterSet, type AdapterSetOptions, type ServedAdapter } from './adapters/adapter-set.js';
import { type MergeAdapterOptions, type MergeAdapterReport, mergeAdapter } from './adapters/apply-resident.js';
import { type MergeFilesOptions, type MergeFilesReport, mergeAdapterFiles } from './adapters/apply-files.js';
import { type MergeGgufOptions, type MergeGgufReport, mergeAdapterGguf } from './adapters/apply-gguf.js';
import { GgufReader } from './io/gguf.js';
import { openGgufAdapter, readGgufAdapter } from './adapters/load-gguf.js';
import { type TensorSource, openTensorSource } from './io/tensor-source.js';
import { type TensorSet, loadTensors, saveTensors } from './io/tensors.js';

export class LoRAWasm {
  /** The wasm build running: 'relaxed' (f32x4.relaxed_madd) or 'baseline' (mul + add). */
  readonly build: Build;
  readonly #engine: Engine;
  readonly #onDispose: (() => void) | undefined;

  /** @internal use init() */
  constructor(engine: Engine, onDispose?: () => void) {
    this.#engine = engine;
    this.#onDispose = onDispose;
    this.build = engine.build;
  }

  /**
   * Threads that large kernels run on now: the calling thread plus the workers
   * that are ready (init({ threads })). Small calls stay on the calling thread.
   */
  get threads(): number {
    return this.#engine.kernel.threads;
  }

  /** Why fewer threads run than init({ threads }) asked for (no shared memory, a worker that could not restart), or undefined. */
  get threadsNote(): string | undefined {
    const problems = this.#engine.kernel.pool?.status().problems ?? [];
    return [this.#engine.threadsNote, ...problems].filter(Boolean).join('; ') || undefined;
  }

  /** @internal test hook: the worker pool (undefined with one thread). */
  get workerPool(): WorkerPool | undefined {
    return this.#engine.kernel.pool;
  }

  /**
   * Ends the worker pool and frees the scratch. The instance keeps working on
   * the calling thread (its matrices stay valid; dispose them yourself), and
   * init() with the same options afterwards makes a new instance.
   */
  dispose(): void {
    this.#engine.kernel.endPool();
    this.#engine.kernel.releaseScratch();
    this.#onDispose?.();
  }

  /** The wasm memory every Matrix of this instance lives in. */
  get memory(): WebAssembly.Memory {
    return this.#engine.heap.memory;
  }

  /** Heap figures, for leak checks: memory size, live bytes and blocks, scratch, allocations so far. */
  memoryStats(): MemoryStats {
    return this.#engine.heap.stats();
  }

  /** Frees the kernel layer's scratch (packing buffers); the next call that needs it allocates it again. */
  releaseScratch(): void {
    this.#engine.kernel.releaseScratch();
  }

  /**
   * Allocates a [rows, cols] row-major Matrix in wasm memory, zero-filled or
   * copied from `data` (a Float32Array, including another Matrix's `data`, or a
   * number[] of rows·cols numbers). With `{ dtype: 'f16' | 'bf16' }` the matrix
   * holds half-precision values: `data` may then also be a Uint16Array of bit
   * patterns; floats are encoded round-to-nearest-even. Free it with dispose().
   */
  matrix(rows: number, cols: number, data?: Float32Array | readonly number[], opts?: MatrixOptions<'f32'>): Matrix;
  matrix<D extends HalfDType>(rows: number, cols: number, data: Float32Array | Uint16Array | readonly number[] | undefined, opts: MatrixOptions<D>): Matrix<D>;
  matrix(rows: number, cols: number, data?: Float32Array | Uint16Array | readonly number[], opts?: MatrixOptions): Matrix<DType> {
    return createMatrix(this.#engine, rows, cols, data, opts);
  }

  /**
   * dst ← src between any two dtypes of one shape (f32 ↔ f16 ↔ bf16), in SIMD.
   * Encoding rounds to nearest, ties to even; NaN, ±Inf, ±0 and f16 subnormals are kept. Returns dst.
   */
  convert<T extends AnyMatrixInput>(dst: T, src: AnyMatrixInput): T {
    return convert(this.#engine, dst, src);
  }
  /** Δ = s·A·B. A: [dOut, r], B: [r, dIn], any dtypes. Allocates and returns a new Matrix [dOut, dIn] (f32 unless options.dtype). */
  delta(a: AnyMatrixInput, b: AnyMatrixInput, opts?: ScaleOptions & { dtype?: 'f32' }): Matrix;
  delta<D extends HalfDType>(a: AnyMatrixInput, b: AnyMatrixInput, opts: ScaleOptions & { dtype: D }): Matrix<D>;
  delta(a: AnyMatrixInput, b: AnyMatrixInput, opts?: DeltaOptions): Matrix<DType> {
    return delta(this.#engine, a, b, opts);
  }

  /** W ← W + s·A·B in place, one fused pass over W. W: [dOut, dIn]. Returns W. */
  merge<T extends AnyMatrixInput>(w: T, a: AnyMatrixInput, b: AnyMatrixInput, opts?: MergeOptions): T {
    return merge(this.#engine, w, a, b, opts);
  }

  /** W ← W − s·A·B in place: undoes merge() with the same A, B and scale. Returns W. */
  unmerge<T extends AnyMatrixInput>(w: T, a: AnyMatrixInput, b: AnyMatrixInput, opts?: MergeOptions): T {
    return unmerge(this.#engine, w, a, b, opts);
  }

  /**
   * out ← W0 + s·A·B, W0 untouched. Bit-identical to merging a fresh copy of
   * W0, so adapters can be hot-swapped from a frozen W0 with zero drift.
   * out may be W0 itself (then it is merge()). Returns out.
   */
  mergeInto<T extends AnyMatrixInput>(out: T, w0: AnyMatrixInput, a: AnyMatrixInput, b: AnyMatrixInput, opts?: MergeOptions): T {
    return mergeInto(this.#engine, out, w0, a, b, opts);
  }

  /**
   * C ← alpha·op(X)·op(Y) + beta·C (op = transpose when transX/transY). nn.Linear's
   * y = x·Wᵀ is gemm(Y, X, W, { transY: true }) with W stored [dOut, dIn]. Returns C.
   */
  gemm<T extends MatrixInput>(c: T, x: MatrixInput, y: MatrixInput, opts?: GemmOptions): T {
    return gemm(this.#engine, c, x, y, opts);
  }

  /** alpha·op(X)·op(Y) as a new Matrix (allocates). */
  matmul(x: MatrixInput, y: MatrixInput, opts?: Omit<GemmOptions, 'beta'>): Matrix {
    return matmul(this.#engine, x, y, opts);
  }

  /** A LoRA layer over a frozen W [dOut, dIn]: trainable A [dOut, r] (zeros) and B [r, dIn]. */
  linear(opts: LoRALinearOptions): LoRALinear {
    return new LoRALinear(this.#engine, opts);
  }

  /** A fully trainable nn.Linear (for pretraining a base model). */
  dense(opts: LinearOptions): Linear {
    return new Linear(this.#engine, opts);
  }

  /** A ReLU layer. */
  relu(): ReLU {
    return new ReLU(this.#engine);
  }

  /** Layers applied in order, with fit()/predict(); takes ownership of the layers (dispose() frees them). */
  sequential(layers: Layer[]): Sequential {
    return new Sequential(this.#engine, layers);
  }

  /** SGD with momentum over params (e.g. model.parameters()). */
  sgd(params: Parameter[], opts?: SGDOptions): SGD {
    return new SGD(this.#engine, params, opts);
  }

  /** AdamW with bias correction and decoupled weight decay over params. */
  adamw(params: Parameter[], opts?: AdamWOptions): AdamW {
    return new AdamW(this.#engine, params, opts);
  }

  // ------------------------------------------------------------ files

  /**
   * Reads an adapter: PEFT (`weights` = adapter_model.safetensors, `config` = adapter_config.json as an
   * object or text) or kohya (no config). `weights` is a TensorSource: bytes, a Blob/File, a ByteSource,
   * an open SafetensorsReader, or in Node a path. Factors stay in their file dtype. Dispose the Adapter when done.
   */
  async loadAdapter(opts: { weights: TensorSource | GgufReader; config?: string | Record<string, unknown> }): Promise<Adapter> {
    if (typeof opts !== 'object' || opts === null) throw new LoRATypeError(`loadAdapter: options must be { weights, config }, got ${describeValue(opts)}`);
    rejectUnknownKeys('loadAdapter', opts, ['weights', 'config']);
    const gguf = await openGgufAdapter(opts.weights);
    if (gguf) {
      try {
        if (opts.config !== undefined) throw new LoRATypeError('loadAdapter: a llama.cpp adapter (.gguf) carries its own alpha and names; it takes no config');
        return await readGgufAdapter(gguf, this.#make, this.#engine);
      } finally {
        if (gguf !== opts.weights) await gguf.close();
      }
    }
    const reader = await openTensorSource(opts.weights, 'loadAdapter: weights');
    try {
      return await readAdapter(reader, opts.config, this.#make);
    } finally {
      if (reader !== opts.weights) await reader.close();
    }
  }

  /**
   * Applies an adapter to a base model's tensors, keyed by the base file's names (see loadTensors):
   * W ← W + multiplier·s·A·B per module, lora_bias added, modules_to_save tensors replaced. All checked
   * before the first write. `{ into }` writes W0 + s·A·B elsewhere and leaves the base untouched.
   */
  mergeAdapter(base: Record<string, Matrix<DType>>, adapter: Adapter, opts?: MergeAdapterOptions): MergeAdapterReport {
    return mergeAdapter(this.#engine, base, adapter, opts);
  }

  /**
   * Merges an adapter into base model files, streaming tensor by tensor (the CLI's engine; also runs
   * in a browser worker over Files). Every target is checked before the first byte is written.
   */
  mergeAdapterFiles(opts: MergeFilesOptions): Promise<MergeFilesReport>;
  /** A GGUF model (one file): quantized tensors are dequantized, merged and requantized (see apply-gguf.ts). */
  mergeAdapterFiles(opts: MergeGgufOptions): Promise<MergeGgufReport>;
  mergeAdapterFiles(opts: MergeFilesOptions | MergeGgufOptions): Promise<MergeFilesReport | MergeGgufReport> {
    if (typeof opts === 'object' && opts !== null && opts.base instanceof GgufReader) return mergeAdapterGguf(this.#engine, opts as MergeGgufOptions);
    if (typeof opts === 'object' && opts !== null && Array.isArray(opts.base) && opts.base.some((b: unknown) => b instanceof GgufReader)) {
      throw new LoRATypeError('mergeAdapterFiles: base must be one GgufReader, or SafetensorsReaders (a model\'s shards); the formats do not mix');
    }
    return mergeAdapterFiles(this.#engine, opts as MergeFilesOptions);
  }

  /** A PEFT adapter (config object + safetensors bytes) from LoRALinear layers keyed by module name, or from an Adapter. */
  /**
   * Mixes adapters into one (PEFT's add_weighted_adapter): method 'cat', 'linear', 'svd', 'ties',
   * 'dare_linear', 'dare_ties' or 'magnitude_prune' (the last four followed by a rank-k SVD).
   */
  combineAdapters(items: WeightedAdapter[], opts: CombineOptions): Adapter {
    return combineAdapters(this.#engine, items, opts);
  }

  /**
   * A rank-k adapter from a fine-tune: ΔW = Wtuned − Wbase by a randomized SVD. Two matrices, or two
   * objects of matrices keyed by tensor name. Reports each module's singular values and kept energy.
   */
  extractAdapter(tuned: Matrix<DType> | Record<string, Matrix<DType>>, base: Matrix<DType> | Record<string, Matrix<DType>>, opts: ExtractOptions): TruncateResult {
    return extractAdapter(this.#engine, tuned, base, opts);
  }

  /** The adapter truncated to a rank, or to a fraction of each module's ‖ΔW‖²_F, from its factors. */
  resizeAdapter(adapter: Adapter, opts: TruncateOptions): TruncateResult {
    return resizeAdapter(this.#engine, adapter, opts);
  }

  /**
   * DoRA → plain LoRA for runtimes without DoRA: each DoRA module's W′ − W (W′ the DoRA merge, in f32)
   * by extractAdapter's randomized SVD at { rank } or { energy }; other modules copied. `base` holds W
   * for each DoRA module, keyed by the base's names. Reports each DoRA module's rank and kept energy.
   */
  doraToLora(adapter: Adapter, base: Record<string, Matrix<DType>>, opts: DoraToLoraOptions): TruncateResult {
    return doraToLora(this.#engine, adapter, base, opts);
  }

  /** Serves many adapters over one base weight W [dOut, dIn] in one batch: forward(X, rowAdapter). */
  adapterSet(w: Matrix, adapters: ServedAdapter[], opts?: AdapterSetOptions): AdapterSet {
    return new AdapterSet(this.#engine, w, adapters, opts);
  }

  saveAdapter(source: Adapter | Record<string, LoRALinear>, opts: SaveAdapterOptions): { config: Record<string, unknown>; weights: Uint8Array } {
    return saveAdapter(source, opts);
  }

  /** Every tensor of a safetensors file (a TensorSource), or the ones named, as matrices in their file dtype. */
  async loadTensors(source: TensorSource, opts?: { names?: readonly string[] }): Promise<TensorSet> {
    rejectUnknownKeys('loadTensors', optionsObject('loadTensors', opts, '{ names }'), ['names']);
    const reader = await openTensorSource(source, 'loadTensors: source');
    try {
      return await loadTensors(reader, this.#make, opts?.names);
    } finally {
      if (reader !== source) await reader.close();
    }
  }

  /** A safetensors file (bytes) from a TensorSet (the reference writer's layout). */
  saveTensors(set: TensorSet): Uint8Array {
    return saveTensors(set);
  }

  readonly #make = (rows: number, cols: number, data: Float32Array | Uint16Array | undefined, dtype: DType): Matrix<DType> =>
    createMatrix(this.#engine, rows, cols, data, { dtype });

  /** mean((pred − target)²); writes 2·(pred − target)/count into grad when given. */
  mseLoss(pred: MatrixInput, target: MatrixInput, grad?: MatrixInput): number {
    return mseLoss(this.#engine, pred, target, grad);
  }

  /** Stable softmax cross-entropy with integer labels; writes (softmax − onehot)/n into grad when given. */
  softmaxCrossEntropy(logits: MatrixInput, labels: Int32Array | readonly number[], grad?: MatrixInput): CrossEntropyResult {
    return softmaxCrossEntropy(this.#engine, logits, labels, grad);
  }
}
