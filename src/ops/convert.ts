/**
 * lw.convert(dst, src): dst ← src between any two dtypes (f32, f16, bf16) of the same shape,
 * by the SIMD kernels of assembly/convert.ts. Encoding rounds to nearest, ties to even; NaN stays
 * NaN (quiet); ±Inf and ±0 are kept; f16 subnormals are exact both ways; f16 overflow gives ±Inf.
 */
import { LoRAShapeError } from '../errors.js';
import type { Engine } from '../runtime/engine.js';
import { ANY_DTYPE, type AnyMatrixInput, assertSameOrDisjoint, operand, shapeOf, withStaging } from './operands.js';

export function convert<T extends AnyMatrixInput>(engine: Engine, dstIn: T, srcIn: AnyMatrixInput): T {
  const fn = 'convert';
  const dst = operand(engine.heap, fn, 'dst', dstIn, ANY_DTYPE);
  const src = operand(engine.heap, fn, 'src', srcIn, ANY_DTYPE);
  if (dst.rows !== src.rows || dst.cols !== src.cols) {
    throw new LoRAShapeError(`${fn}: dst is ${shapeOf(dst)} but src is ${shapeOf(src)}; they must have the same shape`);
  }
  assertSameOrDisjoint(fn, dst, src);
  withStaging(engine.heap, fn, (staging) => {
    const sd = staging.input(src);
    const dd = staging.output(dst, false);
    staging.load();
    engine.kernel.convert(fn, dd, sd);
    staging.commit();
  });
  return dstIn;
}
