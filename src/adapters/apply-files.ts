/**
 * Merging an adapter into base model files, streaming: one safetensors file (or the shards of a
 * sharded model) in, the same files out through caller-given sinks (an atomic file in Node's CLI, a
 * list of Blob parts in a browser worker).
 *
 * Everything is planned and checked first: every module's base tensor is found, its shape and
 * dtype checked, every replacement found. Then each file is written in the reference writer's order:
 * a tensor the adapter does not touch, and whose dtype stays, is copied byte for byte; others are
 * read into wasm memory, merged (and replaced, and converted), and written. The next tensor is read
 * while one is merged, and results are written while the next is computed (writes stay in order),
 * so memory stays near three tensors, not the model.
 */
import { LoRAError, LoRAFormatError } from '../errors.js';
import type { DType, Matrix } from '../memory/matrix.js';
import { convert } from '../ops/convert.js';
import { createMatrix } from '../ops/create.js';
import { merge } from '../ops/merge.js';
import { f32Option } from '../ops/operands.js';
import type { Engine } from '../runtime/engine.js';
import { DTYPE_OF_ST, ST_OF_DTYPE, type SafetensorsReader, type TensorInfo, as2d, planSafetensors, tensorData } from '../io/safetensors.js';
import { type Adapter, type AdapterModule, type Replacement, checkAdapter } from './adapter.js';
import { checkTargetShape, targetOf } from './plan.js';

export interface MergeFilesOptions {
  /** The base model: one reader, or one per shard. */
  base: SafetensorsReader | readonly SafetensorsReader[];
  adapter: Adapter;
  /** Where file i's bytes go, in order. */
  sink: (file: number) => { write(bytes: Uint8Array): Promise<void> };
  /** Output dtype of every float tensor: 'keep' (default), 'f32', 'f16' or 'bf16'. */
  dtype?: 'keep' | DType;
  multiplier?: number;
  prefix?: string;
  safe?: boolean;
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

export async function mergeAdapterFiles(engine: Engine, opts: MergeFilesOptions): Promise<MergeFilesReport> {
  const fn = 'mergeAdapterFiles';
  const readers: SafetensorsReader[] = Array.isArray(opts.base) ? [...(opts.base as readonly SafetensorsReader[])] : [opts.base as SafetensorsReader];
  const adapter = checkAdapter(opts.adapter, fn);
  const multiplier = f32Option(fn, 'options.multiplier', opts.multiplier, 1);
  const dtype = opts.dtype ?? 'keep';
  if (!['keep', 'f32', 'f16', 'bf16'].includes(dtype)) throw new LoRAError(`${fn}: options.dtype must be 'keep', 'f32', 'f16' or 'bf16', got ${String(dtype)}`);
  const prefix = opts.prefix ?? '';

  // plan and check before anything is written
  const where = new Map<string, { reader: SafetensorsReader; info: TensorInfo }>();
  for (const reader of readers) for (const info of reader.tensors) where.set(info.name, { reader, info });
  const names = new Set(where.keys());
  const modulesAt = new Map<string, AdapterModule[]>();
  for (const m of adapter.modules) {
    const target = targetOf(m, adapter.format, names, prefix);
    const { reader, info } = where.get(target)!;
    if (!DTYPE_OF_ST[info.dtype]) throw new LoRAFormatError(`safetensors: ${reader.file}: "${target}" is ${info.dtype}; lora-wasm merges into F32, F16 and BF16 weights`);
    checkTargetShape(m, target, as2d(info.shape));
    if (m.biasDelta) throw new LoRAError(`${fn}: module "${m.name}" has a lora_bias; merge it with lw.mergeAdapter on loaded tensors`);
    modulesAt.set(target, [...(modulesAt.get(target) ?? []), m]);
  }
  const replaceAt = new Map<string, Replacement>();
  for (const r of adapter.replacements) {
    const name = prefix + r.name;
    const hit = where.get(name);
    if (!hit) throw new LoRAError(`${fn}: the adapter replaces "${name}" but the base model has no such tensor`);
    if (as2d(hit.info.shape).join() !== as2d(r.shape).join()) throw new LoRAError(`${fn}: "${name}" is [${hit.info.shape}] in the base but [${r.shape}] in the adapter`);
    if (!DTYPE_OF_ST[hit.info.dtype]) throw new LoRAFormatError(`safetensors: ${hit.reader.file}: "${name}" is ${hit.info.dtype} and cannot take the adapter's values`);
    replaceAt.set(name, r);
  }
  const outDtype = (d: string): string => (dtype === 'keep' || !DTYPE_OF_ST[d] ? d : ST_OF_DTYPE[dtype as DType]);
  const totalBytes = readers.reduce((s, r) => s + r.tensors.reduce((a, t) => a + t.end - t.begin, 0), 0);
  const totalTensors = readers.reduce((s, r) => s + r.tensors.length, 0);

  const report: MergeFilesReport = { merged: 0, replaced: 0, bytes: 0, peakWasmBytes: 0, weightMap: {} };
  let tensorsDone = 0;
  for (let f = 0; f < readers.length; f++) {
    const reader = readers[f]!;
    const sink = opts.sink(f);
    const plan = planSafetensors(reader.tensors.map((t) => ({ ...t, dtype: outDtype(t.dtype) })), reader.metadata);
    await sink.write(plan.header);
    let pendingWrite: Promise<void> | undefined = Promise.resolve();
    let nextRead = handled(plan.order.length ? reader.read(plan.order[0]!.name) : undefined);
    for (let i = 0; i < plan.order.length; i++) {
      const t = plan.order[i]!;
      const src = reader.get(t.name)!;
      const { bytes } = await nextRead!;
      nextRead = handled(i + 1 < plan.order.length ? reader.read(plan.order[i + 1]!.name) : undefined);
      const mods = modulesAt.get(t.name);
      const rep = replaceAt.get(t.name);
      let out = bytes; // untouched and the same dtype: byte for byte
      if (mods || rep || t.dtype !== src.dtype) {
        const [rows, cols] = as2d(src.shape);
        const W = createMatrix(engine, rows, cols, tensorData(reader.file, { info: src, bytes }), { dtype: DTYPE_OF_ST[src.dtype] }) as Matrix<DType>;
        let res: Matrix<DType> = W;
        try {
          for (const m of mods ?? []) {
            merge(engine, W, m.A, m.B, { scale: multiplier * m.scale, safe: opts.safe ?? false });
            report.merged++;
          }
          if (rep) {
            convert(engine, W, rep.tensor); // same [rows, cols]: checked above
            report.replaced++;
          }
          if (DTYPE_OF_ST[t.dtype] !== W.dtype) {
            res = createMatrix(engine, rows, cols, undefined, { dtype: DTYPE_OF_ST[t.dtype] });
            convert(engine, res, W);
          }
          const view = res.data;
          out = new Uint8Array(view.buffer, view.byteOffset, view.byteLength).slice(); // off wasm memory: later calls may grow it
        } finally {
          if (res !== W) res.dispose();
          W.dispose();
        }
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
