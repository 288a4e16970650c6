/**
 * Merging an adapter into base model files, streaming: one safetensors file (or the shards of a
 * sharded model) in, the same files out through caller-given sinks (an atomic file in Node's CLI, a
 * list of Blob parts in a browser worker).
 *
 * Everything is planned and checked first by the planner (plan.ts): targets, shapes, dtypes,
 * replacements, lora_bias, duplicate writes; and a tensor stored in two shards is refused. Then each file is written in the reference writer's order:
 * a tensor the adapter does not touch, and whose dtype stays, is copied byte for byte; others are
 * read into wasm memory, merged (and replaced, and converted), and written. The next tensor is read
 * while one is merged, and results are written while the next is computed (writes stay in order),
 * so memory stays near three tensors, not the model.
 */
import { LoRAFormatError, LoRANonFiniteError } from '../errors.js';
import { describe } from '../kernel/descriptor.js';
import type { DType, Matrix } from '../memory/matrix.js';
import { convert } from '../ops/convert.js';
import { createMatrix } from '../ops/create.js';
import { mergeInto } from '../ops/merge.js';
import type { Engine } from '../runtime/engine.js';
import { DTYPE_OF_ST, ST_OF_DTYPE, type SafetensorsReader, type TensorInfo, as2d, planSafetensors, tensorData } from '../io/safetensors.js';
import { type Adapter, checkAdapter } from './adapter.js';
import { type ApplyOptions, type BaseTensor, type MergeStep, type ReplaceStep, planAdapter, readApplyOptions, readOutputDtype } from './plan.js';

export interface MergeFilesOptions extends ApplyOptions {
  /** The base model: one reader, or one per shard. A tensor stored in two of them is refused. */
  base: SafetensorsReader | readonly SafetensorsReader[];
  adapter: Adapter;
  /** Where file i's bytes go, in order. */
  sink: (file: number) => { write(bytes: Uint8Array): Promise<void> };
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
}

const handled = <T>(p: Promise<T> | undefined): Promise<T> | undefined => {
  p?.catch(() => {}); // a failed run must not leave an unhandled rejection behind; awaiting p still throws
  return p;
};

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
  const totalBytes = readers.reduce((s, r) => s + r.tensors.reduce((a, t) => a + t.end - t.begin, 0), 0);
  const totalTensors = readers.reduce((s, r) => s + r.tensors.length, 0);
  const report: MergeFilesReport = { merged: 0, replaced: 0, bytes: 0, peakWasmBytes: 0, weightMap: {} };
  let tensorsDone = 0;
  for (let f = 0; f < readers.length; f++) {
    const reader = readers[f]!;
    const sink = opts.sink(f);
    const layout = planSafetensors(reader.tensors.map((t) => ({ ...t, dtype: outDtype(t.dtype) })), reader.metadata);
    await sink.write(layout.header);
    let pendingWrite: Promise<void> | undefined = Promise.resolve();
    let nextRead = handled(layout.order.length ? reader.read(layout.order[0]!.name) : undefined);
    for (let i = 0; i < layout.order.length; i++) {
      const t = layout.order[i]!;
      const src = reader.get(t.name)!;
      const { bytes } = await nextRead!;
      nextRead = handled(i + 1 < layout.order.length ? reader.read(layout.order[i + 1]!.name) : undefined);
      const write = plan.writes.get(t.name);
      let out = bytes; // untouched, same dtype (or no elements): byte for byte
      if ((write || t.dtype !== src.dtype) && src.end > src.begin) {
        out = rewrite(engine, reader.file, src, bytes, DTYPE_OF_ST[t.dtype]!, write, options.safe);
        if (write?.merge) report.merged++;
        if (write?.replace) report.replaced++;
        report.peakWasmBytes = Math.max(report.peakWasmBytes, engine.heap.stats().memoryBytes);
      }
      await pendingWrite;
      pendingWrite = handled(sink.write(out));
      report.bytes += src.end - src.begin;
      report.weightMap[t.name] = f;
      opts.onProgress?.({ tensors: ++tensorsDone, totalTensors, bytes: report.bytes, totalBytes });
    }
    await pendingWrite;
  }
  return report;
}

/**
 * One tensor through wasm memory: W (as stored) → the result in the output type, rounding once:
 *   merge      out ← W + s·A·B              (mergeInto: W decoded in the tile, out encoded once)
 *   bias       out ← bias + s·lora_B.bias   (a rank-1 mergeInto)
 *   replace    out ← the adapter's values
 *   convert    out ← W
 * With `safe`, the result is checked finite in the type written.
 */
function rewrite(
  engine: Engine, file: string, src: TensorInfo, bytes: Uint8Array, outType: DType,
  write: { merge?: MergeStep; biasOf?: MergeStep; replace?: ReplaceStep } | undefined, safe: boolean,
): Uint8Array {
  const [rows, cols] = write?.biasOf ? [1, as2d(src.shape)[0] * as2d(src.shape)[1]] : as2d(src.shape);
  const W = createMatrix(engine, rows, cols, tensorData(file, { info: src, bytes }), { dtype: DTYPE_OF_ST[src.dtype] }) as Matrix<DType>;
  const res = outType === W.dtype ? W : (createMatrix(engine, rows, cols, undefined, { dtype: outType }) as Matrix<DType>);
  try {
    if (write?.merge) mergeInto(engine, res, W, write.merge.module.A, write.merge.module.B, { scale: write.merge.scale, safe });
    else if (write?.biasOf) mergeInto(engine, res, W, { rows: 1, cols: 1, data: new Float32Array([1]) }, write.biasOf.module.biasDelta!, { scale: write.biasOf.scale, safe });
    else if (write?.replace) convert(engine, res, write.replace.replacement.tensor);
    else convert(engine, res, W);
    if (safe) {
      const i = engine.kernel.firstNonFinite(fn, describe(res, src.name));
      if (i >= 0) {
        throw new LoRANonFiniteError(
          `${fn}: "${src.name}" would be written with a NaN or ±Infinity at [${Math.floor(i / cols)}, ${i % cols}] in ${outType}${
            outType === 'f16' ? ' (past 65504)' : ''}; with safe: true nothing is written`,
        );
      }
    }
    const view = res.data;
    return new Uint8Array(view.buffer, view.byteOffset, view.byteLength).slice(); // off wasm memory: later calls may grow it
  } catch (e) {
    throw e instanceof LoRANonFiniteError && !e.message.includes(`"${src.name}"`) ? new LoRANonFiniteError(`${fn}: "${src.name}": ${e.message}`) : e;
  } finally {
    if (res !== W) res.dispose();
    W.dispose();
  }
}
