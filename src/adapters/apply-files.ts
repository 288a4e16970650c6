/**
 * Merging an adapter into base model files, streaming: one safetensors file (or the shards of a
 * sharded model) in, the same files out through caller-given sinks (an atomic file in Node's CLI, a
 * list of Blob parts in a browser worker).
 *
 * Everything is planned and checked first by the planner (plan.ts): targets, shapes, dtypes,
 * replacements, lora_bias, duplicate writes; and a tensor stored in two shards is refused.
 *
 * Bytes do not pass through JavaScript buffers. Tensors are read straight into a few wasm-memory
 * blocks (ByteSource.readInto: fs.read into a view of wasm memory), computed there, and written from
 * there (execute()). Two plans:
 *   in place   the output's header and layout equal the input's (dtype kept, or already the output's,
 *              and the input written as the reference writer writes) and the sink can reflink the
 *              input (btrfs, XFS): only the targeted tensors are read, merged in place on every
 *              thread, and written back at their offsets;
 *   streamed   otherwise (ext4 included): the header, then every tensor in the reference writer's
 *              order. Untouched tensors next to each other are one range, copied through the blocks in
 *              chunks of at most 16 MiB (or, where the sink can reference the input — a browser Blob —
 *              not read at all); changed ones are computed from one block into another.
 * With shared memory (threads) the next step is read while one is merged and earlier ones are still
 * being written; with unshared memory, growth may move it, so no I/O is in flight while a kernel runs.
 * A file read that comes up short (the base shrank) is a LoRAFormatError. Memory stays near a few
 * tensors (the blocks), not the model.
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
import { type ByteSource, readInto } from '../io/source.js';
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
      await execute(run, reader, f, inPlaceSteps(run, reader, f, layout.order), sink);
      run.report.inPlaceFiles++;
    } else {
      if (sink.writeAt) await sink.writeAt(0, layout.header);
      else await sink.write(layout.header);
      await execute(run, reader, f, streamedSteps(run, reader, layout.order, layout.header.length, sink), sink);
    }
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

/**
 * One piece of an output file, in the order it is written:
 *   copy     input bytes [from, from + n) to output offset `to`, byte for byte (untouched tensors
 *            next to each other in both files make one range, cut into block-sized chunks);
 *   compute  tensor `src` (n input bytes) read, computed into `out`'s type (outN bytes), written at `to`;
 *   ref      a sink that references the input (a browser Blob slice) takes [from, from + n) unread.
 * `names` are the tensors finished when the step is written.
 */
type Step =
  | { kind: 'copy' | 'ref'; from: number; to: number; n: number; names: string[] }
  | { kind: 'compute'; from: number; to: number; n: number; outN: number; src: TensorInfo; out: TensorInfo; write: Write | undefined; names: string[] };

/** The largest untouched range read at once: big enough for few syscalls, small enough to keep RSS low. */
const COPY_CHUNK = 16 << 20;

/** Reflinked output: only the changed tensors are read, computed in place, and written back at their offsets. */
function inPlaceSteps(run: Run, reader: SafetensorsReader, f: number, order: readonly TensorInfo[]): Step[] {
  const steps: Step[] = [];
  for (const t of order) {
    const write = run.plan.writes.get(t.name);
    const n = t.end - t.begin;
    if (!write || n === 0) done(run, reader, f, t.name); // already in the copy
    else steps.push({ kind: 'compute', from: reader.dataStart + t.begin, to: reader.dataStart + t.begin, n, outN: n, src: t, out: t, write, names: [t.name] });
  }
  return steps;
}

/**
 * Every tensor in the reference writer's order (`layout.order` holds the input's infos with the output
 * dtype), after a header of `at` bytes. Untouched tensors are copied (adjacent ones as one range) or,
 * where the sink can, referenced; the rest are computed.
 */
function streamedSteps(run: Run, reader: SafetensorsReader, order: readonly TensorInfo[], at: number, sink: FileSink): Step[] {
  const steps: Step[] = [];
  for (const t of order) {
    const src = reader.get(t.name)!;
    const write = run.plan.writes.get(t.name);
    const n = src.end - src.begin;
    const from = reader.dataStart + src.begin;
    if (write || t.dtype !== src.dtype) {
      const outN = t.dtype === src.dtype ? n : numelOf(t.shape) * ITEM_BYTES[DTYPE_OF_ST[t.dtype]!];
      steps.push(n === 0 ? { kind: 'copy', from, to: at, n: 0, names: [t.name] } : { kind: 'compute', from, to: at, n, outN, src, out: t, write, names: [t.name] });
      at += outN;
      continue;
    }
    const kind = sink.writeRange ? 'ref' : 'copy';
    const last = steps.at(-1);
    if (last && last.kind === kind && last.from + last.n === from && last.to + last.n === at) {
      last.n += n;
      last.names.push(t.name);
    } else steps.push({ kind, from, to: at, n, names: [t.name] });
    at += n;
  }
  return steps;
}

/** Copy steps cut to at most `chunk` bytes (a tensor's name goes with the chunk that ends it). */
function chunked(steps: Step[], chunk: number): Step[] {
  const out: Step[] = [];
  for (const s of steps) {
    if (s.kind !== 'copy' || s.n <= chunk) {
      out.push(s);
      continue;
    }
    for (let k = 0; k < s.n; k += chunk) out.push({ kind: 'copy', from: s.from + k, to: s.to + k, n: Math.min(chunk, s.n - k), names: k + chunk >= s.n ? s.names : [] });
  }
  return out;
}

/**
 * Carries the steps out through a few wasm-memory blocks. With shared memory (threads) the next
 * step's input is read while this one is computed, and writes finish behind (a positioned sink takes
 * several at once); with unshared memory, growth may move it, so no I/O is in flight while a kernel runs.
 * A positioned sink writes each step at its offset; any other gets the bytes in order (its own copy).
 */
async function execute(run: Run, reader: SafetensorsReader, f: number, stepsIn: Step[], sink: FileSink): Promise<void> {
  const engine = run.engine;
  const overlap = engine.heap.memory.buffer instanceof SharedArrayBuffer;
  const computeBytes = Math.max(0, ...stepsIn.map((s) => (s.kind === 'compute' ? Math.max(s.n, s.outN) : 0)));
  const copyBytes = Math.max(0, ...stepsIn.map((s) => (s.kind === 'copy' ? Math.min(s.n, COPY_CHUNK) : 0)));
  const size = Math.max(computeBytes, copyBytes);
  const steps = chunked(stepsIn, Math.max(size, 1));
  if (steps.every((s) => s.kind === 'ref' || s.n === 0)) {
    for (const s of steps) {
      if (s.n > 0 && !(await sink.writeRange!(reader.source, s.from, s.n))) await sink.write(await reader.source.read(s.from, s.n));
      await finish(run, reader, f, s, undefined);
    }
    return;
  }
  const positioned = sink.writeAt !== undefined;
  const blocks = new Blocks(engine, size, overlap ? 4 : 2);
  const inFlight = new Set<Promise<unknown>>();
  let failed: { error: unknown } | undefined; // the first read or write that failed behind the loop
  const track = <T>(p: Promise<T>): Promise<T> => {
    inFlight.add(p);
    p.then(() => inFlight.delete(p), (error) => {
      inFlight.delete(p);
      failed ??= { error };
    });
    return handled(p)!;
  };
  const view = (b: Block, n: number): Uint8Array => new Uint8Array(engine.heap.memory.buffer, b.ptr, n);
  const reads = (s: Step): boolean => s.kind !== 'ref' && s.n > 0;
  const startRead = (s: Step): Promise<Block> => track((async () => {
    const b = await blocks.acquire();
    try {
      await readInto(reader.source, s.from, view(b, s.n));
    } catch (e) {
      blocks.release(b);
      throw e;
    }
    return b;
  })());
  const emit = (to: number, bytes: Uint8Array): Promise<void> => (positioned ? sink.writeAt!(to, bytes) : sink.write(bytes.slice()));
  let ahead: { i: number; block: Promise<Block> } | undefined;
  try {
    for (let i = 0; i < steps.length; i++) {
      const s = steps[i]!;
      if (failed) throw failed.error;
      if (!reads(s)) {
        if (s.n > 0 && !(await sink.writeRange!(reader.source, s.from, s.n))) {
          // the sink cannot reference this source after all: the range goes through a block, in order
          for (let k = 0; k < s.n; k += size) {
            const b = await blocks.acquire();
            try {
              const bytes = view(b, Math.min(size, s.n - k));
              await readInto(reader.source, s.from + k, bytes);
              await sink.write(bytes.slice());
            } finally {
              blocks.release(b);
            }
          }
        }
        await finish(run, reader, f, s, undefined);
        continue;
      }
      const input = await (ahead?.i === i ? ahead.block : startRead(s));
      ahead = undefined;
      const next = steps.findIndex((x, j) => j > i && reads(x));
      if (overlap && next > 0) ahead = { i: next, block: startRead(steps[next]!) };
      let output = input;
      if (s.kind === 'compute') {
        const converted = s.outN !== s.n || s.out.dtype !== s.src.dtype;
        if (converted) output = await blocks.acquire();
        if (!overlap) await Promise.allSettled(inFlight);
        const W = operandIn(engine, input, s.src, s.write);
        const res = converted ? operandIn(engine, output, s.out, s.write) : W;
        compute(engine, s.src, W, res, s.write, run.safe);
        count(run, s.write);
        if (converted) blocks.release(input);
      }
      const written = track(emit(s.to, view(output, s.kind === 'compute' ? s.outN : s.n)));
      blocks.release(output, written);
      await finish(run, reader, f, s, positioned && overlap ? undefined : written);
    }
    await Promise.all(inFlight);
  } finally {
    blocks.close(); // a read still waiting for a block (after a failure) gives up
    await Promise.allSettled(inFlight); // nothing may still read into, or write from, a block when it is freed
    blocks.dispose();
  }
}

async function finish(run: Run, reader: SafetensorsReader, f: number, s: Step, written: Promise<void> | undefined): Promise<void> {
  await written;
  for (const name of s.names) done(run, reader, f, name);
}

/** A block as a [rows, cols] operand of the tensor's dtype (a bias target is [1, n]). */
function operandIn(engine: Engine, b: Block, t: TensorInfo, write: Write | undefined): AnyMatrixInput {
  const [r, c] = as2d(t.shape);
  const [rows, cols] = write?.biasOf ? [1, r * c] : [r, c];
  const dtype = DTYPE_OF_ST[t.dtype]!;
  return dtype === 'f32'
    ? { rows, cols, data: engine.heap.view(b, rows * cols) }
    : { rows, cols, dtype, data: engine.heap.viewU16(b, rows * cols) };
}

/**
 * A few wasm-memory blocks of one size, allocated once before any I/O and handed out in request
 * order; a block comes back when the write that reads it settles. With shared memory they never move.
 */
class Blocks {
  readonly #engine: Engine;
  readonly #all: Block[] = [];
  readonly #free: Block[] = [];
  readonly #waiting: { give: (b: Block) => void; fail: (e: Error) => void }[] = [];
  #closed = false;

  constructor(engine: Engine, bytes: number, count: number) {
    this.#engine = engine;
    try {
      for (let i = 0; i < count; i++) this.#all.push(engine.heap.alloc(Math.max(bytes, 4), fn));
    } catch (e) {
      this.dispose();
      throw e;
    }
    this.#free.push(...this.#all);
  }

  acquire(): Promise<Block> {
    if (this.#closed) return Promise.reject(new Error(`${fn}: stopped`));
    const b = this.#free.shift();
    return b ? Promise.resolve(b) : new Promise((give, fail) => this.#waiting.push({ give, fail }));
  }

  /** Returns `b` now, or once `after` settles. */
  release(b: Block, after?: Promise<unknown>): void {
    const give = () => {
      const w = this.#waiting.shift();
      if (w) w.give(b);
      else this.#free.push(b);
    };
    if (after) after.then(give, give);
    else give();
  }

  close(): void {
    this.#closed = true;
    for (const w of this.#waiting.splice(0)) w.fail(new Error(`${fn}: stopped`));
  }

  dispose(): void {
    for (const b of this.#all) this.#engine.heap.free(b);
    this.#all.length = 0;
    this.#free.length = 0;
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
