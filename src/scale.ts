import { LoRATypeError } from './errors.js';
import { checkDim, describeValue } from './operands.js';

export interface LoRAScaleOptions {
  /** LoRA alpha (PEFT `lora_alpha`). */
  alpha: number;
  /** Rank r (PEFT `r`). */
  r: number;
  /** rank-stabilised LoRA (PEFT `use_rslora`): alpha/√r instead of alpha/r. */
  rslora?: boolean;
}

/** The LoRA scale s: alpha/r, or alpha/√r for rsLoRA (Kalajdzievski 2023). */
export function loraScale({ alpha, r, rslora = false }: LoRAScaleOptions): number {
  if (typeof alpha !== 'number' || !Number.isFinite(alpha)) {
    throw new LoRATypeError(`loraScale: alpha must be a finite number, got ${describeValue(alpha)}`);
  }
  checkDim('loraScale', 'r', r);
  return rslora ? alpha / Math.sqrt(r) : alpha / r;
}
