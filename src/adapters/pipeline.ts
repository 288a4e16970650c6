/**
 * The file executors' engine: an output file is a list of steps, carried out in order through a few
 * wasm-memory blocks. apply-files.ts (safetensors) and apply-gguf.ts (GGUF) only make the steps.
 *
 *   bytes    literal bytes at output offset `to` (a header, alignment padding);
 *   copy     input bytes [from, from + n) to output offset `to`, byte for byte (untouched tensors next
 *            to each other in both files make one range, cut into chunks of BAND_BYTES);
 *   ref      a sink that references the input (a browser Blob slice) takes [from, from + n) unread;
 *   compute  a tensor's rows, in bands of about BAND_BYTES: each band's bytes read into a block, turned
 *            by `compute` into the output's (in the same block when `inPlace`, else in a second one),
 *            written at their offset.
 * `names` are the tensors finished when the step is written (for progress).
 *
 * Bytes do not pass through JavaScript buffers: reads go straight into the blocks (ByteSource.readInto:
 * fs.read into a view of wasm memory), kernels work there, and writes go out from there. With shared
 * memory (threads) the next step is read while one is computed and earlier ones are still being
 * written (a positioned sink takes several writes at once); with unshared memory, growth may move it,
 * so no I/O is in flight while a kernel runs. A read that comes up short (the file shrank) fails the
 * run with its LoRAFormatError; every block is freed only after the last read or write on it settled.
 */
import type { Block } from '../memory/heap.js';
import type { Engine } from '../runtime/engine.js';
import { type ByteSource, readInto } from '../io/source.js';

export interface FileSink {
  /** Appends bytes. The sink may keep `bytes` (they are its own). */
  write(bytes: Uint8Array): Promise<void>;
  /** Node files: makes the empty output a reflink of `source`'s file; false if it cannot. */
  copyOf?(source: ByteSource): Promise<boolean>;
  /** Writes `bytes` at `offset`; the sink is done with them when the promise resolves (they are wasm memory). */
  writeAt?(offset: number, bytes: Uint8Array): Promise<void>;
  /** Browsers: appends bytes [offset, offset + length) of `source` without reading them (a Blob slice); false if it cannot. */
  writeRange?(source: ByteSource, offset: number, length: number): Promise<boolean>;
}

export type Step =
  | { kind: 'bytes'; to: number; bytes: Uint8Array; names: string[] }
  | { kind: 'copy' | 'ref'; from: number; to: number; n: number; names: string[] }
  | {
    kind: 'compute'; from: number; to: number; n: number; outN: number; names: string[];
    /** The output goes into the input's block (outN ≤ n). */
    inPlace: boolean;
    /**
     * The tensor's rows [r0, r0 + rows) are this step's: rowIn bytes each in the input, rowOut in the
     * output, rowWork in any work area the computation keeps (n = rows·rowIn, outN = rows·rowOut);
     * rowWork Infinity: the computation needs every row at once (one band).
     */
    r0: number;
    rows: number;
    rowIn: number;
    rowOut: number;
    rowWork: number;
    /** Synchronous: kernels on rows [r0, r1) in the blocks' bytes (views made inside, never kept). */
    compute(input: Block, output: Block, r0: number, r1: number): void;
  };

/**
 * The bytes one step holds in a block: a tensor is computed in bands of rows of about this size, and
 * untouched ranges are copied in chunks of it. Fresh wasm memory costs its first touch (measured here:
 * 128 MiB of new pages took 0.5 s to fault in, as long as merging 1 GiB), so blocks stay small; a
 * row is never cut (a band is at least one row).
 */
export const BAND_BYTES = 4 << 20;

/** Rows per band of a compute step. */
export const bandRows = (s: { rows: number; rowIn: number; rowOut: number; rowWork: number }): number =>
  s.rowWork === Infinity ? s.rows : Math.max(1, Math.floor(BAND_BYTES / Math.max(s.rowIn, s.rowOut, s.rowWork, 1)));

/**
 * Adds an untouched tensor's bytes: a copy (or, where the sink can reference the input, a ref) that
 * extends the last one when the two are adjacent in both files.
 */
export function pushUntouched(steps: Step[], sink: FileSink, from: number, to: number, n: number, name: string): void {
  const kind = sink.writeRange ? 'ref' : 'copy';
  const last = steps.at(-1);
  if (last && last.kind === kind && last.from + last.n === from && last.to + last.n === to) {
    last.n += n;
    last.names.push(name);
  } else steps.push({ kind, from, to, n, names: [name] });
}

/** Copy steps cut into chunks of BAND_BYTES, compute steps into bands of rows (a tensor's name goes with its last piece). */
function chunked(steps: readonly Step[]): Step[] {
  const out: Step[] = [];
  for (const s of steps) {
    if (s.kind === 'copy' && s.n > BAND_BYTES) {
      for (let k = 0; k < s.n; k += BAND_BYTES) out.push({ kind: 'copy', from: s.from + k, to: s.to + k, n: Math.min(BAND_BYTES, s.n - k), names: k + BAND_BYTES >= s.n ? s.names : [] });
    } else if (s.kind === 'compute' && s.rows > bandRows(s)) {
      const per = bandRows(s);
      for (let r = 0; r < s.rows; r += per) {
        const rows = Math.min(per, s.rows - r);
        out.push({
          ...s, r0: s.r0 + r, rows, from: s.from + r * s.rowIn, to: s.to + r * s.rowOut, n: rows * s.rowIn, outN: rows * s.rowOut,
          names: r + per >= s.rows ? s.names : [],
        });
      }
    } else out.push(s);
  }
  return out;
}

const handled = <T>(p: Promise<T>): Promise<T> => {
  p.catch(() => {}); // a failed run must not leave an unhandled rejection behind; awaiting p still throws
  return p;
};

/** Carries the steps out in order: reads from `source`, writes to `sink` (at `to` when it is positioned). */
export async function execute(engine: Engine, fn: string, source: ByteSource, stepsIn: readonly Step[], sink: FileSink, onDone: (name: string) => void): Promise<void> {
  const overlap = engine.heap.memory.buffer instanceof SharedArrayBuffer;
  const positioned = sink.writeAt !== undefined;
  const steps = chunked(stepsIn);
  const size = Math.max(1, ...steps.map((s) => (s.kind === 'compute' ? Math.max(s.n, s.outN) : s.kind === 'copy' ? s.n : 0)));
  const emit = (to: number, bytes: Uint8Array): Promise<void> => (positioned ? sink.writeAt!(to, bytes) : sink.write(bytes.slice()));
  const finish = async (s: Step, written?: Promise<void>): Promise<void> => {
    await written;
    for (const name of s.names) onDone(name);
  };
  const reads = (s: Step): s is Extract<Step, { kind: 'copy' | 'compute' }> => (s.kind === 'copy' || s.kind === 'compute') && s.n > 0;
  if (!steps.some(reads)) {
    for (const s of steps) {
      if (s.kind === 'bytes') await (positioned ? sink.writeAt!(s.to, s.bytes) : sink.write(s.bytes));
      else if (s.kind === 'ref' && s.n > 0 && !(await sink.writeRange!(source, s.from, s.n))) await sink.write(await source.read(s.from, s.n));
      await finish(s);
    }
    return;
  }
  const blocks = new Blocks(engine, fn, size, overlap ? 4 : 2);
  const inFlight = new Set<Promise<unknown>>();
  let failed: { error: unknown } | undefined; // the first read or write that failed behind the loop
  const track = <T>(p: Promise<T>): Promise<T> => {
    inFlight.add(p);
    p.then(() => inFlight.delete(p), (error) => {
      inFlight.delete(p);
      failed ??= { error };
    });
    return handled(p);
  };
  const view = (b: Block, n: number): Uint8Array => new Uint8Array(engine.heap.memory.buffer, b.ptr, n);
  // The read is issued now when a block is free (not after an await: that would wait for the
  // synchronous kernel call that follows, and the read would never overlap it).
  const startRead = (s: { from: number; n: number }): Promise<Block> => {
    const go = (b: Block): Promise<Block> => readInto(source, s.from, view(b, s.n)).then(() => b, (e: unknown) => {
      blocks.release(b);
      throw e;
    });
    const free = blocks.take();
    return track(free ? go(free) : blocks.acquire().then(go));
  };
  // the next step that reads, for each step (one pass: a 140 GB model is tens of thousands of bands)
  const nextRead = new Int32Array(steps.length).fill(-1);
  for (let i = steps.length - 2; i >= 0; i--) nextRead[i] = reads(steps[i + 1]!) ? i + 1 : nextRead[i + 1]!;
  let ahead: { i: number; block: Promise<Block> } | undefined;
  try {
    for (let i = 0; i < steps.length; i++) {
      const s = steps[i]!;
      if (failed) throw failed.error;
      if (s.kind === 'bytes') {
        const written = track(positioned ? sink.writeAt!(s.to, s.bytes) : sink.write(s.bytes));
        await finish(s, positioned && overlap ? undefined : written);
        continue;
      }
      if (!reads(s)) {
        if (s.kind === 'ref' && s.n > 0 && !(await sink.writeRange!(source, s.from, s.n))) {
          // the sink cannot reference this source after all: the range goes through a block, in order
          for (let k = 0; k < s.n; k += size) {
            const b = await blocks.acquire();
            try {
              const bytes = view(b, Math.min(size, s.n - k));
              await readInto(source, s.from + k, bytes);
              await sink.write(bytes.slice());
            } finally {
              blocks.release(b);
            }
          }
        }
        await finish(s);
        continue;
      }
      const input = await (ahead?.i === i ? ahead.block : startRead(s));
      ahead = undefined;
      const next = nextRead[i]!;
      if (overlap && next > 0) ahead = { i: next, block: startRead(steps[next] as { from: number; n: number }) };
      let output = input;
      let outN = s.n;
      if (s.kind === 'compute') {
        if (!s.inPlace) output = await blocks.acquire();
        if (!overlap) await Promise.allSettled(inFlight);
        try {
          s.compute(input, output, s.r0, s.r0 + s.rows);
        } catch (e) {
          if (output !== input) blocks.release(output);
          blocks.release(input);
          throw e;
        }
        if (output !== input) blocks.release(input);
        outN = s.outN;
      }
      const written = track(emit(s.to, view(output, outN)));
      blocks.release(output, written);
      await finish(s, positioned && overlap ? undefined : written);
    }
    await Promise.all(inFlight);
    if (failed) throw failed.error;
  } finally {
    blocks.close(); // a read still waiting for a block (after a failure) gives up
    await Promise.allSettled(inFlight); // nothing may still read into, or write from, a block when it is freed
    blocks.dispose();
  }
}

/**
 * A few wasm-memory blocks of one size, allocated once before any I/O and handed out in request
 * order; a block comes back when the write that reads it settles. With shared memory they never move.
 */
class Blocks {
  readonly #engine: Engine;
  readonly #fn: string;
  readonly #all: Block[] = [];
  readonly #free: Block[] = [];
  readonly #waiting: { give: (b: Block) => void; fail: (e: Error) => void }[] = [];
  #closed = false;

  constructor(engine: Engine, fn: string, bytes: number, count: number) {
    this.#engine = engine;
    this.#fn = fn;
    try {
      for (let i = 0; i < count; i++) this.#all.push(engine.heap.alloc(Math.max(bytes, 4), fn));
    } catch (e) {
      this.dispose();
      throw e;
    }
    this.#free.push(...this.#all);
  }

  /** A free block now, or undefined. */
  take(): Block | undefined {
    return this.#closed ? undefined : this.#free.shift();
  }

  acquire(): Promise<Block> {
    if (this.#closed) return Promise.reject(new Error(`${this.#fn}: stopped`));
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
    for (const w of this.#waiting.splice(0)) w.fail(new Error(`${this.#fn}: stopped`));
  }

  dispose(): void {
    for (const b of this.#all) this.#engine.heap.free(b);
    this.#all.length = 0;
    this.#free.length = 0;
  }
}
