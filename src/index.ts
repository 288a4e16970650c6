export { init, detectFeatures } from './runtime.js';
export type { Build, InitOptions, WasmSource } from './runtime.js';
export { LoRAWasm } from './lorawasm.js';
export { Matrix } from './matrix.js';
export type { MatrixInput, MatrixLike } from './operands.js';
export type { MergeOptions, ScaleOptions } from './rank.js';
export type { GemmOptions } from './gemm.js';
export { LoRALinear } from './lora.js';
export type { LoRALinearOptions } from './lora.js';
export { Linear } from './dense.js';
export type { LinearOptions } from './dense.js';
export { ReLU } from './activation.js';
export type { Layer, Parameter } from './layer.js';
export { Sequential } from './model.js';
export type { FitOptions, FitProgress, FitResult } from './model.js';
export { SGD, AdamW } from './optim.js';
export type { SGDOptions, AdamWOptions } from './optim.js';
export type { CrossEntropyResult } from './loss.js';
export type { MemoryStats } from './memory.js';
export { loraScale } from './scale.js';
export { seededRandom } from './random.js';
export type { LoRAScaleOptions } from './scale.js';
export {
  LoRAError,
  LoRAShapeError,
  LoRATypeError,
  LoRADisposedError,
  LoRANonFiniteError,
  LoRAMemoryError,
  LoRAStateError,
} from './errors.js';
