export { init, detectFeatures } from './runtime.js';
export type { Build, InitOptions, WasmSource } from './runtime.js';
export { LoRAWasm } from './lorawasm.js';
export { Matrix } from './matrix.js';
export type { MatrixInput, MatrixLike } from './operands.js';
export type { MergeOptions, ScaleOptions } from './rank.js';
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
} from './errors.js';
