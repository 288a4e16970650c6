export { init } from './init.js';
export { detectFeatures } from './runtime/load.js';
export type { InitOptions, WasmSource } from './runtime/load.js';
export type { Build } from './runtime/engine.js';
export { LoRAWasm } from './lorawasm.js';
export { Matrix } from './memory/matrix.js';
export type { DType, HalfDType, DataOf } from './memory/matrix.js';
export type { MemoryStats } from './memory/heap.js';
export type { AnyMatrixInput, HalfMatrixLike, MatrixInput, MatrixLike } from './ops/operands.js';
export type { DeltaOptions, MergeOptions, ScaleOptions } from './ops/merge.js';
export type { MatrixOptions } from './ops/create.js';
export type { GemmOptions } from './ops/gemm.js';
export type { CrossEntropyResult } from './ops/loss.js';
export { loraScale } from './ops/scale.js';
export type { LoRAScaleOptions } from './ops/scale.js';
export { LoRALinear } from './nn/lora-linear.js';
export type { LoRALinearOptions } from './nn/lora-linear.js';
export { Linear } from './nn/linear.js';
export type { LinearOptions } from './nn/linear.js';
export { ReLU } from './nn/relu.js';
export type { Layer, Parameter } from './nn/layer.js';
export { Sequential } from './nn/sequential.js';
export type { FitOptions, FitProgress, FitResult } from './nn/sequential.js';
export { SGD, AdamW } from './nn/optim.js';
export type { SGDOptions, AdamWOptions } from './nn/optim.js';
export { seededRandom } from './random.js';
export { Adapter } from './adapters/adapter.js';
export type { AdapterModule, Replacement } from './adapters/adapter.js';
export type { DoraAxis, DoraToLoraOptions } from './adapters/dora.js';
export type { CombineMethod, CombineOptions, WeightedAdapter } from './adapters/combine.js';
export type { ExtractOptions, ModuleReport, TruncateOptions, TruncateResult } from './adapters/extract.js';
export { AdapterSet } from './adapters/adapter-set.js';
export type { AdapterFactors, AdapterSetOptions, ServedAdapter } from './adapters/adapter-set.js';
export type { MergeAdapterOptions, MergeAdapterReport } from './adapters/apply-resident.js';
export type { FileSink, MergeFilesOptions, MergeFilesReport } from './adapters/apply-files.js';
export type { GgufOutputType, MergeGgufOptions, MergeGgufReport } from './adapters/apply-gguf.js';
export { GgufReader } from './io/gguf.js';
export type { GgufArray, GgufKV, GgufMetadataEntry, GgufTensorInfo, GgufValue } from './io/gguf.js';
export { copyUnchanged, encodeGguf, planGguf, planGgufFrom, writeGguf } from './io/gguf-write.js';
export type { ByteSink, GgufChanges, GgufPlan, GgufPlannedTensor } from './io/gguf-write.js';
export { GGML_TYPE, GGML_TYPES, ggmlType } from './io/gguf-types.js';
export type { GgmlType, GgmlTypeName } from './io/gguf-types.js';
export { GGUF_NAME_ARCHS, ggufModelInfo, ggufTargetFor } from './gguf/names.js';
export type { GgufModelInfo, GgufTarget } from './gguf/names.js';
export { encodeGgufAdapter, ggufAdapterTensor, planGgufAdapter, writeGgufAdapter } from './adapters/convert-gguf.js';
export type { GgufAdapterEngine, GgufAdapterModule, GgufAdapterOptions, GgufAdapterPlan } from './adapters/convert-gguf.js';
export type { SaveAdapterOptions } from './adapters/save.js';
export type { EmptyTensor, TensorSet } from './io/tensors.js';
export { SafetensorsReader, encodeSafetensors, planSafetensors } from './io/safetensors.js';
export type { TensorInfo } from './io/safetensors.js';
export { bytesSource, blobSource } from './io/source.js';
export type { ByteSource } from './io/source.js';
export type { TensorSource } from './io/tensor-source.js';
export { fileSource, atomicFile } from './io/node-file.js';
export {
  LoRAError,
  LoRAShapeError,
  LoRARangeError,
  LoRATypeError,
  LoRADisposedError,
  LoRANonFiniteError,
  LoRAMemoryError,
  LoRAStateError,
  LoRAFormatError,
  LoRAEnvironmentError,
} from './errors.js';
export type { ErrorKind } from './errors.js';
