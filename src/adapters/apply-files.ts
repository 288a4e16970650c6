/**
 * Merging an adapter into base model files, streaming: one safetensors file (or the shards of a
 * sharded model) in, the same files out through caller-given sinks (an atomic file in Node's CLI, a
 * list of Blob parts in a browser worker).
 *
 * Everything is planned and checked first by the planner (plan.ts): targets, shapes, dtypes,
 * replacements, lora_bias, duplicate writes; and a tensor stored in two shards is refused.
 *
 * The steps are carried out by pipeline.ts (bytes straight between the files and wasm memory, the next
 * step read while one is merged, writes behind). Two plans:
 *   in place   the output's header and layout equal the input's (dtype kept, or already the output's,
 *              and the input written as the reference writer writes) and the sink can reflink the
 *              input (btrfs, XFS): only the targeted tensors are read, merged in place on every
 *              thread, and written back at their offsets;
 *   streamed   otherwise (ext4 included): the header, then every tensor in the reference writer's
 *              order. Untouched tensors next to each other are one range, copied through the blocks
 *              (or, where the sink can reference the input — a browser Blob — not read at all);
 *              changed ones are computed from one block into another.
 * Memory stays near a few tensors (the blocks), not the model.
 */
import { LoRAFormatError } from '../errors.js';
import type { Block } from '../memory/heap.js';
import type { DType } from '../memory/matrix.js';
import type { AnyMatrixInput } from '../ops/operands.js';
import type { Engine } from '../runtime/engine.js';
import { DTYPE_OF_ST, ST_OF_DTYPE, type SafetensorsReader, type TensorInfo, as2d, numelOf, planSafetensors } from '../io/safetensors.js';
import { ITEM_BYTES } from '../memory/dtype.js';
import { type Adapter, checkAdapter } from './adapter.js';
import { type Write, compute } from './apply-step.js';
import { type FileSink, type Step, execute, pushUntouched } from './pipeline.js';
import { type AdapterPlan, type ApplyOptions, type BaseTensor, planAdapter, readApplyOptions, readOutputDtype } from './plan.js';

export type { FileSink } from './pipeline.js';

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
    const inPlace = sameLayout && sink.copyOf && sink.writeAt && (await sink.copyOf(reader.source));
    const steps = inPlace ? inPlaceSteps(run, reader, f, layout.order) : streamedSteps(run, reader, layout.header, layout.order, sink);
    await execute(engine, fn, reader.source, steps, sink, (name) => done(run, reader, f, name));
    if (inPlace) run.report.inPlaceFiles++;
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

/** Reflinked output: only the changed tensors are read, computed in place, and written back at their offsets. */
function inPlaceSteps(run: Run, reader: SafetensorsReader, f: number, order: readonly TensorInfo[]): Step[] {
  const steps: Step[] = [];
  for (const t of order) {
    const write = run.plan.writes.get(t.name);
    const n = t.end - t.begin;
    if (!write || n === 0) done(run, reader, f, t.name); // already in the copy
    else steps.push(computeStep(run, reader.dataStart + t.begin, reader.dataStart + t.begin, t, t, write));
  }
  return steps;
}

/**
 * The header, then every tensor in the reference writer's order (`order` holds the input's infos with
 * the output dtype). Untouched tensors are copied (adjacent ones as one range) or, where the sink can,
 * referenced; the rest are computed.
 */
function streamedSteps(run: Run, reader: SafetensorsReader, header: Uint8Array, order: readonly TensorInfo[], sink: FileSink): Step[] {
  const steps: Step[] = [{ kind: 'bytes', to: 0, bytes: header, names: [] }];
  let at = header.length;
  for (const t of order) {
    const src = reader.get(t.name)!;
    const write = run.plan.writes.get(t.name);
    const n = src.end - src.begin;
    const from = reader.dataStart + src.begin;
    if (write || t.dtype !== src.dtype) {
      const step = n === 0 ? { kind: 'copy' as const, from, to: at, n: 0, names: [t.name] } : computeStep(run, from, at, src, t, write);
      steps.push(step);
      at += step.kind === 'compute' ? step.outN : 0;
    } else {
      pushUntouched(steps, sink, from, at, n, t.name);
      at += n;
    }
  }
  return steps;
}

/** Tensor `src` (as stored) → `out` (its output dtype) through the plan's write, on the blocks, in bands of rows. */
function computeStep(run: Run, from: number, to: number, src: TensorInfo, out: TensorInfo, write: Write | undefined): Step {
  const n = src.end - src.begin;
  const outN = out.dtype === src.dtype ? n : numelOf(out.shape) * ITEM_BYTES[DTYPE_OF_ST[out.dtype]!];
  const inPlace = out.dtype === src.dtype;
  const [r, c] = as2d(src.shape);
  const [rows, cols] = write?.biasOf ? [1, r * c] : [r, c];
  // DoRA with norms over W's stored columns (fan_in_fan_out, a [1, in] dora_scale) needs every row at
  // once: such a tensor is one band (GPT-2's Conv1D weights, where it occurs, are a few MB)
  const whole = write?.merge?.module.magnitude !== undefined && write.merge.module.magnitudeAxis === 'cols';
  return {
    kind: 'compute', from, to, n, outN, inPlace, names: [src.name], r0: 0, rows, rowIn: n / rows, rowOut: outN / rows, rowWork: whole ? Infinity : 0,
    compute: (input, output, r0, r1) => {
      const W = operandIn(run.engine, input, r1 - r0, cols, DTYPE_OF_ST[src.dtype]!);
      compute(run.engine, fn, src.name, W, inPlace ? W : operandIn(run.engine, output, r1 - r0, cols, DTYPE_OF_ST[out.dtype]!), write, run.safe, undefined, r0,
        undefined, rows); // DoRA: the tensor's rows, so column norms are refused when a band is not all of them
      if (r1 === rows) count(run, write);
    },
  };
}

/** A block as a [rows, cols] operand of `dtype`. */
function operandIn(engine: Engine, b: Block, rows: number, cols: number, dtype: DType): AnyMatrixInput {
  return dtype === 'f32'
    ? { rows, cols, data: engine.heap.view(b, rows * cols) }
    : { rows, cols, dtype, data: engine.heap.viewU16(b, rows * cols) };
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

