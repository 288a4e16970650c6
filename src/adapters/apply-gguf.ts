/**
 * Merging an adapter into a GGUF model (llama.cpp's format), streaming, quantized tensors included.
 *
 * The planner (plan.ts) decides every write, with a Naming that finds each adapter module's GGUF tensor:
 *   PEFT adapter       its Hugging Face module name through llama.cpp's converter rules (gguf/names.ts:
 *                      'model.layers.3.self_attn.q_proj' → 'blk.3.attn_q.weight'), with the row order
 *                      the converter gave the weight (llama's q/k permutation), which ΔW's rows follow;
 *   llama.cpp adapter  (lw.loadAdapter of an adapter .gguf) its modules already carry GGUF names.
 * For each targeted tensor, in wasm memory:
 *   W ← the tensor as stored, decoded (F32, F16, BF16 as they are; Q4_0 … Q6_K dequantized to f32)
 *   W ← W + m·s·A·B       in f32 (F16/BF16 tensors: decoded in the tile and rounded once)
 *   out ← W in the tensor's own type (`dtype: 'keep'`, requantized with ggml's reference quantizers,
 *          the bytes llama.cpp's quantize_row_*_ref gives) or in `dtype` (f32, f16, bf16, q8_0; 2-D
 *          weights only: 1-D tensors such as biases keep their type, as llama.cpp expects)
 * Everything else stays as it was: the metadata byte for byte, untouched tensors (and the padding after
 * them) copied, the alignment. The output's layout is llama.cpp's (gguf-write.ts).
 * The steps run on the shared file engine (pipeline.ts): bytes between the files and wasm memory only.
 */
import { LoRAFormatError, LoRANonFiniteError, LoRAShapeError, LoRATypeError, describeValue } from '../errors.js';
import type { GgufReader, GgufTensorInfo } from '../io/gguf.js';
import { GGML_TYPE, type GgmlTypeName, ggmlType } from '../io/gguf-types.js';
import { planGgufFrom } from '../io/gguf-write.js';
import { as2d } from '../io/safetensors.js';
import type { Block } from '../memory/heap.js';
import type { DType, Matrix } from '../memory/matrix.js';
import { convert } from '../ops/convert.js';
import { createMatrix } from '../ops/create.js';
import { ANY_DTYPE, type AnyMatrixInput, operand } from '../ops/operands.js';
import type { Engine } from '../runtime/engine.js';
import { QUANT_TYPES, dequantize, quantize } from '../gguf/quant.js';
import { closestNames, ggufModelInfo, ggufTargetFor } from '../gguf/names.js';
import { type Adapter, checkAdapter } from './adapter.js';
import { type Write, band, compute } from './apply-step.js';
import { doraScaleRows } from './dora.js';
import { type FileSink, type Step, bandRows, execute, pushUntouched } from './pipeline.js';
import { type ApplyOptions, type BaseTensor, type MergeStep, type Naming, planAdapter, readApplyOptions } from './plan.js';

export type GgufOutputType = 'keep' | 'f32' | 'f16' | 'bf16' | 'q8_0';

export interface MergeGgufOptions extends ApplyOptions {
  base: GgufReader;
  adapter: Adapter;
  /** Where the output's bytes go (file 0: a GGUF model is one file): an AtomicFile in Node, Blob parts in a browser. */
  sink: (file: number) => FileSink;
  /** The type merged 2-D tensors are written in: their own ('keep', default) or f32, f16, bf16, q8_0. */
  dtype?: GgufOutputType;
  onProgress?: (p: { tensors: number; totalTensors: number; bytes: number; totalBytes: number }) => void;
}

export interface MergeGgufReport {
  merged: number;
  replaced: number;
  bytes: number;
  peakWasmBytes: number;
  /** Tensor name → file index (0), as for safetensors. */
  weightMap: Record<string, number>;
  inPlaceFiles: 0;
  /** Each written tensor's type, where it changed ('blk.0.attn_q.weight' → 'F16'). */
  retyped: Record<string, string>;
}

const fn = 'mergeAdapterFiles';
const FLOAT: Partial<Record<GgmlTypeName, DType>> = { F32: 'f32', F16: 'f16', BF16: 'bf16' };
const OUT_TYPES: Record<Exclude<GgufOutputType, 'keep'>, GgmlTypeName> = { f32: 'F32', f16: 'F16', bf16: 'BF16', q8_0: 'Q8_0' };
const COMPUTABLE = `F32, F16, BF16 or a type lora-wasm quantizes (${QUANT_TYPES.filter((t) => !FLOAT[t]).join(', ')})`;
const padTo = (n: number, a: number): number => n + ((a - (n % a)) % a);

export function readGgufOutputType(v: unknown): GgufOutputType {
  if (v === undefined) return 'keep';
  if (v !== 'keep' && !(typeof v === 'string' && Object.hasOwn(OUT_TYPES, v))) {
    throw new LoRATypeError(`${fn}: options.dtype for a GGUF base must be 'keep', 'f32', 'f16', 'bf16' or 'q8_0', got ${describeValue(v)}`);
  }
  return v as GgufOutputType;
}

/** How adapter names find this model's GGUF tensors. */
function ggufNaming(reader: GgufReader, adapter: Adapter, prefix: string): Naming {
  const names = new Set(reader.tensors.map((t) => t.name));
  const missing = (what: string, want: string): LoRAShapeError => {
    const close = closestNames(want, names);
    return new LoRAShapeError(`${fn}: ${what} has no tensor "${want}" in ${reader.file}${close.length ? `; closest GGUF names: ${close.map((n) => `"${n}"`).join(', ')}` : ''}`);
  };
  if (adapter.format === 'gguf') {
    // a llama.cpp adapter names the base tensors itself; like llama.cpp, its architecture must be the model's
    const [mine, theirs] = [adapter.config['general.architecture'], reader.value('general.architecture')];
    if (mine !== theirs) throw new LoRAFormatError(`${fn}: the llama.cpp adapter is for architecture ${JSON.stringify(mine)} but ${reader.file} is ${JSON.stringify(theirs)}`);
    return {
      module: (m) => {
        const target = `${prefix}${m.name}.weight`;
        if (!names.has(target)) throw missing(`the llama.cpp adapter's module "${m.name}"`, target);
        if (reader.get(target)!.shape.length < 2) {
          // llama.cpp loads such a pair but applies LoRA only in matrix products (build_lora_mm): merging it would change what llama.cpp runs
          throw new LoRAFormatError(`${fn}: the llama.cpp adapter has a lora_a/lora_b pair on "${target}", a 1-D tensor; llama.cpp applies adapters only to matrix weights and ignores it, so it is not merged either`);
        }
        return { target };
      },
      tensor: (name) => prefix + name,
    };
  }
  const info = ggufModelInfo(reader);
  return {
    module: (m) => {
      // PEFT names the Hugging Face module; kohya writes it with '_' for '.' after lora_te_/lora_unet_
      const { target, rowPermutation } = ggufTargetFor(info, m.name, prefix, adapter.format === 'kohya' ? 'kohya' : 'hf');
      return rowPermutation ? { target, rows: rowPermutation } : { target };
    },
    // a replacement (modules_to_save) names a tensor: its module's GGUF tensor with the same suffix
    tensor: (name) => {
      const m = /^(.*)\.(weight|bias)$/.exec(name);
      if (!m) throw new LoRAShapeError(`${fn}: the adapter replaces "${name}", which names no module's weight or bias`);
      return ggufTargetFor(info, m[1]!, prefix).target.replace(/weight$/, m[2]!);
    },
  };
}

/** Merges `adapter` into the GGUF model `base`, writing the whole output to `sink`. */
export async function mergeAdapterGguf(engine: Engine, opts: MergeGgufOptions): Promise<MergeGgufReport> {
  const reader = opts.base;
  const adapter = checkAdapter(opts.adapter, fn);
  const options = readApplyOptions(fn, opts, '{ base, adapter, sink, dtype, multiplier, prefix, safe }', ['base', 'adapter', 'sink', 'dtype', 'onProgress']);
  const dtype = readGgufOutputType(opts.dtype);
  const lookup = (name: string): BaseTensor => {
    const t = reader.get(name)!;
    const computable = FLOAT[t.typeName] ?? (QUANT_TYPES.includes(t.typeName) ? 'f32' : undefined);
    return { shape: as2d(t.shape), dtype: computable, typeName: t.typeName, where: `gguf: ${reader.file}`, computable: COMPUTABLE };
  };
  const names = new Set(reader.tensors.map((t) => t.name));
  const plan = planAdapter(fn, names, lookup, adapter, options, ggufNaming(reader, adapter, options.prefix));
  // DoRA with norms over W's stored columns (fan_in_fan_out) has no GGUF architecture here that uses it
  const byCols = plan.merges.find((st) => st.module.magnitude && st.module.magnitudeAxis === 'cols');
  if (byCols) throw new LoRAShapeError(`${fn}: module "${byCols.module.name}" is DoRA with fan_in_fan_out (norms over W's stored columns); a GGUF merge supports DoRA on [out, in] weights only`);

  // output types: merged 2-D tensors in `dtype`, everything else as it is
  const types = new Map<string, GgmlTypeName>();
  for (const name of plan.writes.keys()) {
    const t = reader.get(name)!;
    if (dtype === 'keep' || t.shape.length < 2) continue;
    const want = ggmlType(OUT_TYPES[dtype])!;
    if (t.ne[0]! % want.blockSize !== 0) throw new LoRAShapeError(`${fn}: "${name}" has rows of ${t.ne[0]} values; ${want.name} stores rows of whole ${want.blockSize}-value blocks (pass another dtype)`);
    if (want.name !== t.typeName) types.set(name, want.name);
  }
  const out = await planGgufFrom(reader, { types });

  // A's rows (and a lora_bias) in the base's row order, for modules the converter permuted
  const made: Matrix<DType>[] = [];
  const permuted = new Map<MergeStep, { A: AnyMatrixInput; biasDelta?: AnyMatrixInput }>();
  const report: MergeGgufReport = { merged: 0, replaced: 0, bytes: 0, peakWasmBytes: 0, weightMap: {}, inPlaceFiles: 0, retyped: {} };
  const sink = opts.sink(0);
  let scratch: Block | undefined;
  try {
    for (const step of plan.merges) {
      if (!step.rows) continue;
      if (step.rows.length !== step.module.A.rows) {
        throw new LoRAFormatError(`gguf: ${reader.file}: "${step.target}" has ${step.module.A.rows} rows but its heads (head_count × key_length in the metadata) give ${step.rows.length}`);
      }
      const gather = (m: Matrix<DType>, rows: number, cols: number): Matrix<DType> => {
        const src = m.data;
        const dst = new (src.constructor as Float32ArrayConstructor | Uint16ArrayConstructor)(src.length);
        for (let i = 0; i < rows; i++) dst.set(src.subarray(step.rows![i]! * cols, (step.rows![i]! + 1) * cols), i * cols);
        const g = createMatrix(engine, rows, cols, dst, { dtype: m.dtype });
        made.push(g);
        return g;
      };
      const bias = step.module.biasDelta;
      permuted.set(step, { A: gather(step.module.A, step.module.A.rows, step.module.A.cols), ...(bias ? { biasDelta: gather(bias, 1, bias.cols) } : {}) });
    }
    // f32 factors for the float64 merge of tensors written quantized (A in the base's row order; a
    // lora_bias as the rank-1 [1]·bias)
    const exact = new Map<MergeStep, ExactFactors>();
    const f32Of = (m: AnyMatrixInput & { rows: number; cols: number }): Matrix<DType> => {
      const x = createMatrix(engine, m.rows, m.cols);
      made.push(x);
      convert(engine, x, m);
      return x;
    };
    for (const step of plan.merges) {
      const quantized = (name: string | undefined) => name !== undefined && !FLOAT[(out.tensors.find((t) => t.name === name)!).typeName];
      if (!quantized(step.target) && !quantized(step.bias)) continue;
      const p = permuted.get(step);
      const bias = p?.biasDelta ?? step.module.biasDelta;
      const one = bias ? createMatrix(engine, 1, 1, new Float32Array([1])) : undefined;
      if (one) made.push(one);
      exact.set(step, {
        A: f32Of(p?.A ?? step.module.A), B: f32Of(step.module.B), s: options.multiplier * step.module.scale,
        ...(bias ? { one, bias: f32Of(bias) } : {}),
      });
    }

    const steps: Step[] = [{ kind: 'bytes', to: 0, bytes: out.header, names: [] }];
    const totalBytes = reader.tensors.reduce((s, t) => s + t.size, 0);
    for (let k = 0; k < out.tensors.length; k++) {
      const t = out.tensors[k]!;
      const src = t.from!;
      const write = plan.writes.get(t.name);
      const pad = padTo(t.size, out.alignment) - t.size;
      if (!write) {
        // the tensor and, where the input has the same padding before its next tensor, that padding too
        const nextFrom = k + 1 < out.tensors.length ? out.tensors[k + 1]!.from!.begin : reader.source.size;
        const withPad = src.begin + src.size + pad <= nextFrom;
        pushUntouched(steps, sink, src.begin, t.begin, src.size + (withPad ? pad : 0), t.name);
        if (!withPad && pad > 0) steps.push({ kind: 'bytes', to: t.begin + t.size, bytes: new Uint8Array(pad), names: [] });
        continue;
      }
      if (t.typeName !== src.typeName) report.retyped[t.name] = t.typeName;
      steps.push(ggufStep(engine, options.safe, src, t.typeName, t.begin, t.size, write, () => scratch!, (s) => permuted.get(s), (s) => exact.get(s)!));
      if (pad > 0) steps.push({ kind: 'bytes', to: t.begin + t.size, bytes: new Uint8Array(pad), names: [] });
      if (write.merge) report.merged++;
      if (write.replace) report.replaced++;
    }
    // one f32 work area, for a band of a tensor decoded from, or encoded to, a quantized type
    const largest = Math.max(0, ...steps.map((st) => (st.kind === 'compute' ? Math.min(st.rows, bandRows(st)) * st.rowWork : 0)));
    if (largest > 0) scratch = engine.heap.alloc(largest, fn);
    let tensorsDone = 0;
    await execute(engine, fn, reader.source, steps, sink, (name) => {
      report.weightMap[name] = 0;
      report.bytes += reader.get(name)!.size;
      report.peakWasmBytes = Math.max(report.peakWasmBytes, engine.heap.stats().memoryBytes);
      opts.onProgress?.({ tensors: ++tensorsDone, totalTensors: reader.tensors.length, bytes: report.bytes, totalBytes });
    });
    return report;
  } finally {
    if (scratch) engine.heap.free(scratch);
    for (const m of made) m.dispose();
  }
}

/** A merge's factors in f32 for mergeExact, and its float64 scale. */
interface ExactFactors {
  A: Matrix<DType>;
  B: Matrix<DType>;
  s: number;
  one?: Matrix<DType>;
  bias?: Matrix<DType>;
}

/**
 * One targeted tensor: `src` (n bytes as stored) → outType (outN bytes) at `to`.
 *   float out   W decoded (dequantized into the f32 work area, or used as stored), the result computed
 *               in place or into the output type, rounding once (mergeInto);
 *   quantized   W decoded into the work area, merged there in float64 (mergeExact: the exact merge's
 *   out         f32, which ggml's reference quantizers, sensitive to every last bit, then see), and
 *               encoded with the quantizer (the bytes llama.cpp's quantize_row_*_ref gives).
 */
function ggufStep(
  engine: Engine, safe: boolean, src: GgufTensorInfo, outType: GgmlTypeName, to: number, outN: number, write: Write,
  scratch: () => Block, rowsOf: (s: MergeStep) => { A: AnyMatrixInput; biasDelta?: AnyMatrixInput } | undefined,
  exactOf: (s: MergeStep) => ExactFactors,
): Step {
  const srcFloat = FLOAT[src.typeName];
  const outFloat = FLOAT[outType];
  const n = src.size;
  const inPlace = srcFloat && outFloat ? src.typeName === outType : outN <= n;
  const [r, c] = as2d(src.shape);
  const [rows, cols] = write.biasOf ? [1, r * c] : [r, c];
  const needsWork = !srcFloat || !outFloat;
  return {
    kind: 'compute', from: src.begin, to, n, outN, inPlace, names: [src.name],
    // rows are whole ggml blocks (ne[0] is a multiple of the block size), so a band of rows is too
    r0: 0, rows, rowIn: n / rows, rowOut: outN / rows, rowWork: needsWork ? cols * 4 : 0,
    compute: (input, output, r0, r1) => {
      const m = r1 - r0;
      const count = m * cols;
      const operandAt = (b: Block, dt: DType): AnyMatrixInput => (dt === 'f32'
        ? { rows: m, cols, data: engine.heap.view(b, count) }
        : { rows: m, cols, dtype: dt, data: engine.heap.viewU16(b, count) });
      const check = (b: Block, type: string, why: string): void => {
        const i = engine.kernel.firstNonFinite(fn, operand(engine.heap, fn, src.name, operandAt(b, 'f32'), ANY_DTYPE).desc!);
        if (i >= 0) throw new LoRANonFiniteError(`${fn}: "${src.name}" would be written with a NaN or ±Infinity at [${r0 + Math.floor(i / cols)}, ${i % cols}] in ${type}${why}; with safe: true nothing is written`);
      };
      const dst = inPlace ? input : output;
      const work = needsWork ? scratch() : undefined;
      if (!srcFloat) dequantize(engine, src.type, work!.ptr, input.ptr, count);
      if (outFloat) {
        const W = srcFloat ? operandAt(input, srcFloat) : operandAt(work!, 'f32');
        const res = srcFloat === outFloat ? W : operandAt(dst, outFloat);
        compute(engine, fn, src.name, W, res, write, safe, (s) => rowsOf(s) ?? { A: s.module.A, ...(s.module.biasDelta ? { biasDelta: s.module.biasDelta } : {}) }, r0,
          undefined, rows); // DoRA: column norms are refused unless the band is the whole tensor
        return;
      }
      if (srcFloat) convert(engine, operandAt(work!, 'f32'), operandAt(input, srcFloat));
      if (write.merge) {
        const e = exactOf(write.merge);
        engine.kernel.mergeExact(fn, work!.ptr, e.A.ptr + r0 * e.A.cols * 4, e.B.ptr, m, cols, e.A.cols, e.s);
        // DoRA (dora.ts): the exact merge's rows scaled by m/‖V‖ (rows of a GGUF weight are PEFT's output rows)
        if (write.merge.module.magnitude) doraScaleRows(engine.heap.view(work!, count), m, cols, write.merge, r0);
      } else if (write.biasOf) {
        const e = exactOf(write.biasOf);
        engine.kernel.mergeExact(fn, work!.ptr, e.one!.ptr, e.bias!.ptr, 1, cols, 1, e.s);
      } else if (write.replace) convert(engine, operandAt(work!, 'f32'), band(engine.heap, write.replace.replacement.tensor, r0, m));
      if (safe) check(work!, 'f32', ' (before it is quantized)');
      quantize(engine, GGML_TYPE[outType], dst.ptr, work!.ptr, count);
      if (safe) {
        // a block's f16 scale can overflow where every value is finite (|x| past 65504 × the type's range)
        dequantize(engine, GGML_TYPE[outType], work!.ptr, dst.ptr, count);
        check(work!, outType, ' (a block\'s f16 scale overflows)');
      }
    },
  };
}
