/**
 * extractAdapter over model files, streamed: kohya's extract_lora_from_models and mergekit's
 * extract_lora for two safetensors models (each one file or its shards), one pair of tensors at a time.
 *
 *   candidates   every 2-D F32/F16/BF16 tensor `<module>.weight` of the base (optionally only the
 *                modules a regex finds), which the tuned model must hold in the same shape
 *   per module   read the base tensor and its tuned twin, ΔW = tuned − base by extractAdapter's
 *                randomized SVD (rank k, at most min(out, in); or the fewest keeping `energy`), free both
 *   zero ΔW      the same bytes, or no singular value above 0: skipped and listed, as kohya and
 *                mergekit skip them (a zero module would only add parameters)
 *
 * Every pairing and shape is checked from the headers before the first tensor is read, so a missing
 * module or a shape mismatch fails at once, naming the tensor. Memory holds two weights and ΔW (the
 * randomized SVD's temporaries), plus the factors kept so far: O(r·(out + in)) per module.
 */
import { LoRAFormatError, LoRAShapeError } from '../errors.js';
import type { DType, Matrix } from '../memory/matrix.js';
import { DTYPE_OF_ST, type SafetensorsReader, type TensorInfo } from '../io/safetensors.js';
import type { TensorSet } from '../io/tensors.js';
import type { Adapter, AdapterModule } from './adapter.js';
import type { ExtractOptions, ModuleReport, TruncateResult } from './extract.js';
import { newAdapter } from './result.js';

/** What extractAdapterFiles needs of lw: loadTensors and extractAdapter. */
export interface ExtractFilesEngine {
  loadTensors(source: SafetensorsReader, opts: { names: readonly string[] }): Promise<TensorSet>;
  extractAdapter(tuned: Matrix<DType>, base: Matrix<DType>, opts: ExtractOptions): TruncateResult;
}

export interface ExtractFilesOptions {
  /** The base model: one reader per shard. */
  base: readonly SafetensorsReader[];
  /** The fine-tuned model: one reader per shard. */
  tuned: readonly SafetensorsReader[];
  rank?: number;
  energy?: number;
  /** Only modules (tensor names without `.weight`) this regex finds. */
  modules?: RegExp;
  /** The randomized SVD's seed (default 0). */
  seed?: number;
  /** Called after each candidate, with how many are done and how many there are. */
  onProgress?: (p: { done: number; total: number; module: string }) => void;
}

export interface ExtractFilesResult {
  /** A PEFT-format adapter (scale 1, alpha = r per module), keyed by module name. */
  adapter: Adapter;
  /** Per extracted module: its rank, singular values found and the fraction of ‖ΔW‖²_F kept. */
  modules: ModuleReport[];
  /** Modules whose ΔW is zero, skipped. */
  zero: string[];
  /** Modules whose rank was lowered to min(out, in) (a --rank above it). */
  clamped: { name: string; rank: number }[];
}

interface Pair {
  module: string;
  base: { reader: SafetensorsReader; info: TensorInfo };
  tuned: { reader: SafetensorsReader; info: TensorInfo };
}

const FN = 'extractAdapterFiles';
const isCandidate = (t: TensorInfo): boolean => t.shape.length === 2 && DTYPE_OF_ST[t.dtype] !== undefined && t.name.endsWith('.weight') && t.shape[0]! > 0 && t.shape[1]! > 0;

/** The tensor named in any shard, with its reader. */
function locate(readers: readonly SafetensorsReader[]): Map<string, { reader: SafetensorsReader; info: TensorInfo }> {
  const at = new Map<string, { reader: SafetensorsReader; info: TensorInfo }>();
  for (const reader of readers) for (const info of reader.tensors) at.set(info.name, { reader, info });
  return at;
}

/** The candidate pairs, in the base's order, every pairing and shape checked. */
export function planExtract(base: readonly SafetensorsReader[], tuned: readonly SafetensorsReader[], modules?: RegExp): Pair[] {
  const b = locate(base);
  const t = locate(tuned);
  const pairs: Pair[] = [];
  const wanted = (info: TensorInfo): boolean => isCandidate(info) && (modules === undefined || modules.test(info.name.slice(0, -'.weight'.length)));
  for (const [name, x] of b) {
    if (!wanted(x.info)) continue;
    const y = t.get(name);
    if (!y) throw new LoRAShapeError(`${FN}: the tuned model has no tensor "${name}" (the base model's ${x.reader.file} has it)`);
    if (y.info.shape.length !== 2 || y.info.shape[0] !== x.info.shape[0] || y.info.shape[1] !== x.info.shape[1]) {
      throw new LoRAShapeError(`${FN}: "${name}" is [${x.info.shape.join(', ')}] in the base model but [${y.info.shape.join(', ')}] in the tuned one`);
    }
    if (DTYPE_OF_ST[y.info.dtype] === undefined) throw new LoRAFormatError(`${FN}: "${name}" is ${y.info.dtype} in the tuned model; lora-wasm reads F32, F16 and BF16`);
    pairs.push({ module: name.slice(0, -'.weight'.length), base: x, tuned: y });
  }
  for (const [name, y] of t) {
    if (wanted(y.info) && !b.has(name)) throw new LoRAShapeError(`${FN}: the base model has no tensor "${name}" (the tuned model's ${y.reader.file} has it)`);
  }
  if (pairs.length === 0) throw new LoRAShapeError(`${FN}: no 2-D float "<module>.weight" tensor${modules ? ` whose module matches ${modules}` : ''} in the base model`);
  return pairs;
}

const bytesOf = (m: Matrix<DType>): Uint8Array => new Uint8Array(m.data.buffer, m.data.byteOffset, m.data.byteLength);
function sameBytes(a: Matrix<DType>, b: Matrix<DType>): boolean {
  if (a.dtype !== b.dtype) return false;
  const x = bytesOf(a);
  const y = bytesOf(b);
  if (x.length !== y.length) return false;
  for (let i = 0; i < x.length; i++) if (x[i] !== y[i]) return false;
  return true;
}

/** Extracts an adapter from two models' files, one module at a time (see the file comment). */
export async function extractAdapterFiles(lw: ExtractFilesEngine, o: ExtractFilesOptions): Promise<ExtractFilesResult> {
  const pairs = planExtract(o.base, o.tuned, o.modules);
  const kept: AdapterModule[] = [];
  const reports: ModuleReport[] = [];
  const zero: string[] = [];
  const clamped: { name: string; rank: number }[] = [];
  try {
    for (const [i, p] of pairs.entries()) {
      const [rows, cols] = p.base.info.shape as [number, number];
      const b = (await lw.loadTensors(p.base.reader, { names: [p.base.info.name] })).tensors[p.base.info.name]!;
      let t: Matrix<DType> | undefined;
      try {
        t = (await lw.loadTensors(p.tuned.reader, { names: [p.tuned.info.name] })).tensors[p.tuned.info.name]!;
        if (sameBytes(t, b)) zero.push(p.module);
        else {
          const full = Math.min(rows, cols);
          const rank = o.rank === undefined ? undefined : Math.min(o.rank, full);
          if (o.rank !== undefined && o.rank > full) clamped.push({ name: p.module, rank: full });
          const r = lw.extractAdapter(t, b, { ...(rank === undefined ? { energy: o.energy! } : { rank }), name: p.module, seed: o.seed ?? 0 });
          const m = r.adapter.modules[0]!;
          if (!r.modules[0]!.singularValues.some((s) => s > 0)) {
            r.adapter.dispose();
            zero.push(p.module);
          } else {
            kept.push(m);
            reports.push(r.modules[0]!);
          }
        }
      } finally {
        b.dispose();
        t?.dispose();
      }
      o.onProgress?.({ done: i + 1, total: pairs.length, module: p.module });
    }
  } catch (e) {
    for (const m of kept) for (const x of [m.A, m.B]) x.dispose();
    throw e;
  }
  if (kept.length === 0) {
    throw new LoRAShapeError(`${FN}: every candidate module's difference is zero (${zero.length}: ${zero.slice(0, 3).join(', ')}${zero.length > 3 ? ', …' : ''}); the tuned model equals the base there, so there is nothing to extract`);
  }
  return { adapter: newAdapter(kept), modules: reports, zero, clamped };
}
