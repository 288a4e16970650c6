/**
 * Merging an adapter into base model files, streaming: one safetensors file (or the shards of a
 * sharded model) in, the same files out through caller-given sinks (an atomic file in Node's CLI, a
 * list of Blob parts in a browser worker).
 *
 * Everything is planned and checked first by the planner (plan.ts): targets, shapes, dtypes,
 * replacements, lora_bias, duplicate writes; and a tensor stored in two shards is refused.
 *
 * Bytes do not pass through JavaScript buffers. Tensors are read straight into a ring of wasm-memory
 * blocks (ByteSource.readInto: fs.read into a view of wasm memory), computed there, and written from
 * there. Two paths:
 *   in place   the output's header and layout equal the input's (dtype kept, or already the output's,
 *              and the input written as the reference writer writes): the sink copies the input in the
 *              kernel (fs.copyFile, a reflink where the file system can), and only the targeted tensors
 *              are read, merged in place on every thread, and written back at their offsets;
 *   streamed   otherwise: the header, then every tensor in the reference writer's order. Untouched
 *              tensors go through a ring block (or, where the sink can reference the input — a browser
 *              Blob — are not read at all); changed ones are computed from a ring block into one.
 * With shared memory (threads) the next tensor is read while one is merged and the last one written;
 * with unshared memory, growth may move it, so no I/O is in flight while a kernel runs.
 * Memory stays near a few tensors (the ring), not the model.
 */
import { LoRAFormatError, LoRANonFiniteError } from '../errors.js';
import type { Block } from '../memory/heap.js';
import type { DType } from '../memory/matrix.js';
import { convert } from '../ops/convert.js';
import { mergeInto } from '../ops/merge.js';
import { ANY_DTYPE, type AnyMatrixInput, operand } from '../ops/operands.js';
import type { Engine } from '../runtime/engine.js';
import { DTYPE_OF_ST, ST_OF_DTYPE, type SafetensorsReader, type TensorInfo, as2d, numelOf, planSafetensors } from '../io/safetensors.js';
import { ITEM_BYTES } from '../memory/dtype.js';
import type { ByteSource } from '../io/source.js';
import { type Adapter, checkAdapter } from './adapter.js';
import { type AdapterPlan, type ApplyOptions, type BaseTensor, type MergeStep, type ReplaceStep, planAdapter, readApplyOptions, readOutputDtype } from './plan.js';

export interface FileSink {
  /** Appends bytes. The sink may keep `bytes` (they are its own). */
  write(bytes: Uint8Array): Promise<void>;
  /** Node files: makes the empty output a copy of `source`'s file in the kernel; false if it cannot. */
  copyOf?(source: ByteSource): Promise<boolean>;
  /** Writes `bytes` at `offset`; the sink is done with them when the promise resolves (they are wasm memory). */
  writeAt?(offset: number, bytes: Uint8Array): Promise<void>;
  /** Browsers: appends bytes [offset, offset + length) of `source` without reading them (a Blob slice); false if it cannot. */
  writeRange?(source: ByteSource, offset: number, length: number): Promise<boolean>;
}

export interface MergeFilesOptions extends ApplyOptions {
  /** The base model: one reader, or one per shard. A tensor stored in two of them is refused. */
  base: SafetensorsReader | readonly SafetensorsReader[];
  adapter: Adapter;
  /** Where file i's bytes go: an AtomicFile in Node (copyOf, writeAt), a list of Blob parts in a browser (writeRange). */
  sink: (file: number) => FileSink;
  /**
   * Output dtype of every float tensor: 'keep' (default), 'f32', 'f16' or 'bf16'. With `safe`, every
   * tensor converted, merged or replaced is checked finite in this type (untouched tensors kept in
   * their dtype are copied byte for byte, unchecked).
   */
  dtype?: 'keep' | DType;
  /** Called after each tensor: tensors and bytes done so far, of the totals. */
  onProgress?: (p: { tensors: number; totalTensors: number; bytes: number; totalBytes: number }) => void;
}

export interface MergeFilesReport {
  merged: number;
  replaced: number;
  bytes: number;
  /** The largest wasm memory seen. */
  peakWasmBytes: number;
  /** Tensor name → the index of the file it was written to. */
  weightMap: Record<string, number>;
  /** Files written in place (a kernel copy of the input, then the changed tensors at their offsets). */
  inPlaceFiles: number;
}

const fn = 'mergeAdapterFiles';
type Write = { merge?: MergeStep; biasOf?: MergeStep; replace?: ReplaceStep };

export async function mergeAdapterFiles(engine: Engine, opts: MergeFilesOptions): Promise<MergeFilesReport> {
  const readers: SafetensorsReader[] = Array.isArray(opts.base) ? [...(opts.base as readonly SafetensorsReader[])] : [opts.base as SafetensorsReader];
  const adapter = checkAdapter(opts.adapter, fn);
  const options = readApplyOptions(fn, opts, '{ base, adapter, sink, dtype, multiplier, prefix, safe }', ['base', 'adapter', 'sink', 'dtype', 'onProgress']);
  const dtype = readOutputDtype(fn, opts.dtype);

  const where = new Map<string, { reader: SafetensorsReader; info: TensorInfo }>();
  for (const reader of readers) {
    for (const info of reader.tensors) {
      const twin = where.get(info.name);
      if (twin) throw new LoRAFormatError(`${fn}: "${info.name}" is stored in both ${twin.reader.file} and ${reader.file}; a tensor may be in one shard only`);
      where.set(info.name, { reader, info });
    }
  }
  const lookup = (name: string): BaseTensor => {
    const { reader, info } = where.get(name)!;
    return { shape: as2d(info.shape), dtype: DTYPE_OF_ST[info.dtype], typeName: info.dtype, where: `safetensors: ${reader.file}` };
  };
  const plan = planAdapter(fn, new Set(where.keys()), lookup, adapter, options);

  const outDtype = (d: string): string => (dtype === 'keep' || !DTYPE_OF_ST[d] ? d : ST_OF_DTYPE[dtype]);
  const run: Run = {
    engine, plan, safe: options.safe, onProgress: opts.onProgress,
    totalBytes: readers.reduce((s, r) => s + r.tensors.reduce((a, t) => a + t.end - t.begin, 0), 0),
    totalTensors: readers.reduce((s, r) => s + r.tensors.length, 0),
    tensorsDone: 0,
    report: { merged: 0, replaced: 0, bytes: 0, peakWasmBytes: 0, weightMap: {}, inPlaceFiles: 0 },
  };
  for (let f = 0; f < readers.length; f++) {
    const reader = readers[f]!;
    const sink = opts.sink(f);
    const layout = planSafetensors(reader.tensors.map((t) => ({ ...t, dtype: outDtype(t.dtype) })), reader.metadata);
    const sameLayout = layout.dataBytes === reader.source.size - reader.dataStart && sameBytes(layout.header, await reader.headerBytes());
    if (sameLayout && sink.copyOf && sink.writeAt && (await sink.copyOf(reader.source))) {
      await inPlace(run, reader, f, layout.order, sink as Required<Pick<FileSink, 'writeAt'>>);
      run.report.inPlaceFiles++;
    } else await streamed(run, reader, f, layout, sink);
  }
  return run.report;
}

interface Run {
  engine: Engine;
  plan: AdapterPlan;
  safe: boolean;
  onProgress: MergeFilesOptions['onProgress'];
  totalBytes: number;
  totalTensors: number;
  tensorsDone: number;
  report: MergeFilesReport;
}

function done(run: Run, reader: SafetensorsReader, f: number, name: string): void {
  const src = reader.get(name)!;
  run.report.bytes += src.end - src.begin;
  run.report.weightMap[name] = f;
  run.report.peakWasmBytes = Math.max(run.report.peakWasmBytes, run.engine.heap.stats().memoryBytes);
  run.onProgress?.({ tensors: ++run.tensorsDone, totalTensors: run.totalTensors, bytes: run.report.bytes, totalBytes: run.totalBytes });
}

function count(run: Run, write: Write | undefined): void {
  if (write?.merge) run.report.merged++;
  if (write?.replace) run.report.replaced++;
}

/** The output is a kernel copy of the input; only the changed tensors are read, computed in place, and written back. */
async function inPlace(run: Run, reader: SafetensorsReader, f: number, order: readonly TensorInfo[], sink: { writeAt(offset: number, bytes: Uint8Array): Promise<void> }): Promise<void> {
  const targets = order.filter((t) => run.plan.writes.has(t.name) && t.end > t.begin);
  for (const t of order) if (!targets.includes(t)) done(run, reader, f, t.name); // already in the copy
  const ring = new Ring(run.engine, Math.max(0, ...targets.map((t) => t.end - t.begin)), targets.length);
  try {
    const read = (k: number): Promise<void> => reader.readInto(targets[k]!, ring.bytes(k, targets[k]!.end - targets[k]!.begin));
    let next: Promise<void> | undefined = targets.length ? handled(read(0)) : undefined;
    for (let k = 0; k < targets.length; k++) {
      const t = targets[k]!;
      await next;
      if (k + 1 < targets.length) {
        await ring.free(k + 1);
        next = handled(read(k + 1));
      }
      if (!ring.overlap) await next; // unshared memory may move while a kernel runs: nothing in flight
      const W = ring.operand(k, t, DTYPE_OF_ST[t.dtype]!, run.plan.writes.get(t.name)!);
      compute(run.engine, t, W, W, run.plan.writes.get(t.name)!, run.safe);
      count(run, run.plan.writes.get(t.name));
      ring.using(k, handled(sink.writeAt(reader.dataStart + t.begin, ring.bytes(k, t.end - t.begin)))!);
      if (!ring.overlap) await ring.free(k);
      done(run, reader, f, t.name);
    }
    await ring.drain();
  } finally {
    ring.dispose();
  }
}

/** The header, then every tensor in the writer's order, through the ring (or referenced, where the sink can). */
async function streamed(
  run: Run, reader: SafetensorsReader, f: number, layout: { header: Uint8Array; order: TensorInfo[] }, sink: FileSink,
): Promise<void> {
  const positioned = sink.writeAt !== undefined;
  let pos = 0;
  const emit = async (bytes: Uint8Array, own: boolean): Promise<void> => {
    if (positioned) await sink.writeAt!(pos, bytes);
    else await sink.write(own ? bytes : bytes.slice()); // a sink that keeps parts gets its own copy
    pos += bytes.length;
  };
  await emit(layout.header, true);
  // layout.order holds the input's infos with the output dtype: its begin/end are the input's
  const outBytes = (t: TensorInfo): number => {
    const src = reader.get(t.name)!;
    return t.dtype === src.dtype ? src.end - src.begin : numelOf(t.shape) * ITEM_BYTES[DTYPE_OF_ST[t.dtype]!];
  };
  const largest = Math.max(0, ...layout.order.map((t) => Math.max(reader.get(t.name)!.end - reader.get(t.name)!.begin, outBytes(t))));
  // slot k holds tensor k's input; a converted tensor's output goes to the slot after it
  const ring = new Ring(run.engine, largest, layout.order.length * 2);
  try {
    for (let k = 0; k < layout.order.length; k++) {
      const t = layout.order[k]!;
      const src = reader.get(t.name)!;
      const write = run.plan.writes.get(t.name);
      const n = src.end - src.begin;
      if (!write && t.dtype === src.dtype) {
        if (n === 0 || (sink.writeRange && (await sink.writeRange(reader.source, reader.dataStart + src.begin, n)))) {
          done(run, reader, f, t.name);
          continue;
        }
      }
      if (n === 0) {
        done(run, reader, f, t.name);
        continue;
      }
      const slot = 2 * k;
      await ring.free(slot);
      await reader.readInto(src, ring.bytes(slot, n));
      let outSlot = slot;
      let out = ring.bytes(slot, n);
      if (write || t.dtype !== src.dtype) {
        await ring.free(slot + 1);
        const W = ring.operand(slot, src, DTYPE_OF_ST[src.dtype]!, write);
        const res = t.dtype === src.dtype ? W : ring.operand(slot + 1, t, DTYPE_OF_ST[t.dtype]!, write);
        if (!ring.overlap) await ring.drain();
        compute(run.engine, src, W, res, write, run.safe);
        count(run, write);
        if (res !== W) outSlot = slot + 1;
        out = ring.bytes(outSlot, outBytes(t));
      }
      // positioned sinks are done with the bytes when the write resolves; others get a copy now
      const p = handled(emit(out, false))!;
      ring.using(outSlot, p);
      if (!positioned || !ring.overlap) await p;
      done(run, reader, f, t.name);
    }
    await ring.drain();
  } finally {
    ring.dispose();
  }
}

/**
 * A few wasm-memory blocks of one size, reused in turn (slot k is block k mod count), each with the
 * write that still reads it. Blocks are allocated once, before any I/O; with shared memory they never
 * move, so reads and writes may be in flight while kernels run.
 */
class Ring {
  readonly overlap: boolean;
  readonly #engine: Engine;
  readonly #blocks: Block[] = [];
  readonly #busy: (Promise<void> | undefined)[] = [];

  constructor(engine: Engine, bytes: number, uses: number) {
    this.#engine = engine;
    this.overlap = engine.heap.memory.buffer instanceof SharedArrayBuffer;
    const count = Math.min(uses, this.overlap ? 3 : 2);
    try {
      for (let i = 0; i < count; i++) this.#blocks.push(engine.heap.alloc(Math.max(bytes, 4), fn));
    } catch (e) {
      this.dispose();
      throw e;
    }
  }

  #block(k: number): Block {
    return this.#blocks[k % this.#blocks.length]!;
  }

  /** Slot k's first `n` bytes, as a view made now (never kept across growth). */
  bytes(k: number, n: number): Uint8Array {
    const b = this.#block(k);
    return new Uint8Array(this.#engine.heap.memory.buffer, b.ptr, n);
  }

  /** Slot k as a [rows, cols] operand of `dtype` (a bias target is [1, n]). */
  operand(k: number, t: TensorInfo, dtype: DType, write: Write | undefined): AnyMatrixInput {
    const [r, c] = as2d(t.shape);
    const [rows, cols] = write?.biasOf ? [1, r * c] : [r, c];
    const heap = this.#engine.heap;
    return dtype === 'f32'
      ? { rows, cols, data: heap.view(this.#block(k), rows * cols) }
      : { rows, cols, dtype, data: heap.viewU16(this.#block(k), rows * cols) };
  }

  using(k: number, p: Promise<void>): void {
    this.#busy[k % this.#blocks.length] = p;
  }

  async free(k: number): Promise<void> {
    const i = k % this.#blocks.length;
    const p = this.#busy[i];
    this.#busy[i] = undefined;
    await p;
  }

  async drain(): Promise<void> {
    for (let i = 0; i < this.#blocks.length; i++) await this.free(i);
  }

  dispose(): void {
    for (const b of this.#blocks) this.#engine.heap.free(b);
    this.#blocks.length = 0;
  }
}

const handled = <T>(p: Promise<T> | undefined): Promise<T> | undefined => {
  p?.catch(() => {}); // a failed run must not leave an unhandled rejection behind; awaiting p still throws
  return p;
};

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/**
 * One tensor in wasm memory: W (as stored) → res in the output type, rounding once (res may be W):
 *   merge      res ← W + s·A·B              (mergeInto: W decoded in the tile, res encoded once)
 *   bias       res ← bias + s·lora_B.bias   (a rank-1 mergeInto)
 *   replace    res ← the adapter's values
 *   convert    res ← W
 * With `safe`, the result is checked finite in the type written.
 */
function compute(engine: Engine, src: TensorInfo, W: AnyMatrixInput, res: AnyMatrixInput, write: Write | undefined, safe: boolean): void {
  try {
    if (write?.merge) mergeInto(engine, res, W, write.merge.module.A, write.merge.module.B, { scale: write.merge.scale, safe });
    else if (write?.biasOf) mergeInto(engine, res, W, { rows: 1, cols: 1, data: new Float32Array([1]) }, write.biasOf.module.biasDelta!, { scale: write.biasOf.scale, safe });
    else if (write?.replace) convert(engine, res, write.replace.replacement.tensor);
    else if (res !== W) convert(engine, res, W);
    if (safe) {
      const out = res as { rows: number; cols: number; dtype?: DType };
      const i = engine.kernel.firstNonFinite(fn, operand(engine.heap, fn, src.name, res, ANY_DTYPE).desc!);
      if (i >= 0) {
        const outType = out.dtype ?? 'f32';
        throw new LoRANonFiniteError(
          `${fn}: "${src.name}" would be written with a NaN or ±Infinity at [${Math.floor(i / out.cols)}, ${i % out.cols}] in ${outType}${
            outType === 'f16' ? ' (past 65504)' : ''}; with safe: true nothing is written`,
        );
      }
    }
  } catch (e) {
    throw e instanceof LoRANonFiniteError && !e.message.includes(`"${src.name}"`) ? new LoRANonFiniteError(`${fn}: "${src.name}": ${e.message}`) : e;
  }
}
