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
import type { MergeStep, ReplaceStep } from './plan.js';

export type Write = { merge?: MergeStep; biasOf?: MergeStep; replace?: ReplaceStep };

/**
 * One tensor in wasm memory: W (as stored) → res in the output type, rounding once (res may be W):
 *   merge      res ← W + s·A·B              (mergeInto: W decoded in the tile, res encoded once)
 *   bias       res ← bias + s·lora_B.bias   (a rank-1 mergeInto)
 *   replace    res ← the adapter's values
 *   convert    res ← W
 * With `safe`, the result is checked finite in the type written. `rowsOf(step)` gives a step's A and
 * lora_bias in the base's row order (MergeStep.rows), where it is not the adapter's.
 */
export function compute(
  engine: Engine, fn: string, name: string, W: AnyMatrixInput, res: AnyMatrixInput, write: Write | undefined, safe: boolean,
  rowsOf?: (step: MergeStep) => { A: AnyMatrixInput; biasDelta?: AnyMatrixInput },
): void {
  try {
    if (write?.merge) mergeInto(engine, res, W, rowsOf?.(write.merge).A ?? write.merge.module.A, write.merge.module.B, { scale: write.merge.scale, safe });
    else if (write?.biasOf) mergeInto(engine, res, W, { rows: 1, cols: 1, data: new Float32Array([1]) }, rowsOf?.(write.biasOf).biasDelta ?? write.biasOf.module.biasDelta!, { scale: write.biasOf.scale, safe });
    else if (write?.replace) convert(engine, res, write.replace.replacement.tensor);
    else if (res !== W) convert(engine, res, W);
    if (safe) {
      const out = res as { rows: number; cols: number; dtype?: DType };
      const i = engine.kernel.firstNonFinite(fn, operand(engine.heap, fn, name, res, ANY_DTYPE).desc!);
      if (i >= 0) {
        const outType = out.dtype ?? 'f32';
        throw new LoRANonFiniteError(
          `${fn}: "${name}" would be written with a NaN or ±Infinity at [${Math.floor(i / out.cols)}, ${i % out.cols}] in ${outType}${
            outType === 'f16' ? ' (past 65504)' : ''}; with safe: true nothing is written`,
        );
      }
    }
  } catch (e) {
    throw e instanceof LoRANonFiniteError && !e.message.includes(`"${name}"`) ? new LoRANonFiniteError(`${fn}: "${name}": ${e.message}`) : e;
  }
}
