/**
 * One planned write carried out on operands in wasm memory, for the file executors (apply-files.ts,
 * apply-gguf.ts): the same kernels and the same `safe` check whichever file format holds the tensor.
 */
import { LoRANonFiniteError } from '../errors.js';
import type { DType } from '../memory/matrix.js';
import { convert } from '../ops/convert.js';
import { mergeInto } from '../ops/merge.js';
import { ANY_DTYPE, type AnyMatrixInput, operand } from '../ops/operands.js';
import type { Engine } from '../runtime/engine.js';
import type { WasmHeap } from '../memory/heap.js';
import type { MergeStep, ReplaceStep } from './plan.js';
import { doraMerge } from './dora.js';

export type Write = { merge?: MergeStep; biasOf?: MergeStep; replace?: ReplaceStep };

/**
 * One tensor in wasm memory: W (as stored) → res in the output type, rounding once (res may be W):
 *   merge      res ← W + s·A·B              (mergeInto: W decoded in the tile, res encoded once)
 *   DoRA       res ← m/‖V‖ ⊙ V, V = W + s·A·B (dora.ts: V in f32, scaled, encoded once; a band's rows are
 *              whole, so row norms are complete; column norms come from `doraCols`, made beforehand)
 *   bias       res ← bias + s·lora_B.bias   (a rank-1 mergeInto)
 *   replace    res ← the adapter's values
 *   convert    res ← W
 * With `safe`, the result is checked finite in the type written. `rowsOf(step)` gives a step's A and
 * lora_bias in the base's row order (MergeStep.rows), where it is not the adapter's.
 */
export function compute(
  engine: Engine, fn: string, name: string, W: AnyMatrixInput, res: AnyMatrixInput, write: Write | undefined, safe: boolean,
  rowsOf?: (step: MergeStep) => { A: AnyMatrixInput; biasDelta?: AnyMatrixInput }, r0 = 0,
  doraCols?: (step: MergeStep) => Float32Array | undefined, totalRows?: number,
): void {
  // W and res hold the tensor's rows [r0, r0 + W.rows) (a band): A's and a replacement's rows follow
  const rows = (W as { rows: number }).rows;
  try {
    if (write?.merge?.module.magnitude) {
      const A = band(engine.heap, rowsOf?.(write.merge).A ?? write.merge.module.A, r0, rows);
      doraMerge(engine, fn, res, W, write.merge, A, r0, totalRows ?? rows, doraCols?.(write.merge));
    } else if (write?.merge) mergeInto(engine, res, W, band(engine.heap, rowsOf?.(write.merge).A ?? write.merge.module.A, r0, rows), write.merge.module.B, { scale: write.merge.scale, safe });
    else if (write?.biasOf) mergeInto(engine, res, W, { rows: 1, cols: 1, data: new Float32Array([1]) }, rowsOf?.(write.biasOf).biasDelta ?? write.biasOf.module.biasDelta!, { scale: write.biasOf.scale, safe });
    else if (write?.replace) convert(engine, res, band(engine.heap, write.replace.replacement.tensor, r0, rows));
    else if (res !== W) convert(engine, res, W);
    if (safe) {
      const out = res as { rows: number; cols: number; dtype?: DType };
      const i = engine.kernel.firstNonFinite(fn, operand(engine.heap, fn, name, res, ANY_DTYPE).desc!);
      if (i >= 0) {
        const outType = out.dtype ?? 'f32';
        throw new LoRANonFiniteError(
          `${fn}: "${name}" would be written with a NaN or ±Infinity at [${r0 + Math.floor(i / out.cols)}, ${i % out.cols}] in ${outType}${
            outType === 'f16' ? ' (past 65504)' : ''}; with safe: true nothing is written`,
        );
      }
    }
  } catch (e) {
    throw e instanceof LoRANonFiniteError && !e.message.includes(`"${name}"`) ? new LoRANonFiniteError(`${fn}: "${name}": ${e.message}`) : e;
  }
}

/** Rows [r0, r0 + rows) of a matrix, as a view of its memory (the whole matrix when that is all of it). */
export function band(heap: WasmHeap, m: AnyMatrixInput, r0: number, rows: number): AnyMatrixInput {
  const x = m as { rows: number; cols: number; dtype?: DType; data: Float32Array | Uint16Array };
  if (r0 === 0 && rows === x.rows) return m;
  const half = x.dtype !== undefined && x.dtype !== 'f32';
  const data = x.data;
  const owner = heap.ownerOf(data);
  const n = rows * x.cols;
  // a view of wasm memory must be one the heap made (operands check whose memory it is)
  const at = owner ? data.byteOffset - owner.ptr + r0 * x.cols * data.BYTES_PER_ELEMENT : 0;
  const view = owner ? (half ? heap.viewU16(owner, n, undefined, at) : heap.view(owner, n, undefined, at)) : data.subarray(r0 * x.cols, r0 * x.cols + n);
  return half ? { rows, cols: x.cols, dtype: x.dtype as 'f16' | 'bf16', data: view as Uint16Array } : { rows, cols: x.cols, data: view as Float32Array };
}
