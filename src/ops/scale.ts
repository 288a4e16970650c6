import { LoRANonFiniteError, LoRATypeError, describeValue } from '../errors.js';
import { checkDim } from './operands.js';

export interface LoRAScaleOptions {
  /** LoRA alpha (PEFT `lora_alpha`). */
  alpha: number;
  /** Rank r (PEFT `r`). */
  r: number;
  /** rank-stabilised LoRA (PEFT `use_rslora`): alpha/√r instead of alpha/r. */
  rslora?: boolean;
}

/** The LoRA scale s: alpha/r, or alpha/√r for rsLoRA (Kalajdzievski 2023). Finite in f32, or LoRANonFiniteError. */
export function loraScale({ alpha, r, rslora = false }: LoRAScaleOptions): number {
  if (typeof alpha !== 'number' || !Number.isFinite(alpha)) {
    throw new LoRATypeError(`loraScale: alpha must be a finite number, got ${describeValue(alpha)}`);
  }
  checkDim('loraScale', 'r', r);
  const s = rslora ? alpha / Math.sqrt(r) : alpha / r;
  if (!Number.isFinite(Math.fround(s))) {
    throw new LoRANonFiniteError(`loraScale: alpha ${alpha} over ${rslora ? '√r' : 'r'} = ${s} is not finite in f32`);
  }
  return s;
}
