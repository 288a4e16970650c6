// Every kernel the .wasm exports. Kernels take byte pointers into the
// imported memory and sizes; none allocates (src/memory/heap.ts owns the heap).
export { buildIsRelaxed } from './simd';
export { TILE_ROWS, TILE_COLS, EPILOGUE_STORE, EPILOGUE_ADD, EPILOGUE_CHECK, EPILOGUE_AXPBY } from './tile';
export { packA, packB } from './pack';
export { convert, DTYPE_F32, DTYPE_F16, DTYPE_BF16 } from './convert';
export { firstNonFinite, absMax, maxRowAbsSum, firstDifference } from './finite';
export { rankUpdate } from './rank';
export { gemm, gemvT, GEMM_MC, GEMM_KC, GEMM_NC } from './gemm';
export { broadcastRows, columnSums } from './lora';
export { reluForward, reluBackward } from './activation';
export { mseLoss, softmaxCrossEntropy } from './loss';
export { sgdStep, adamwStep } from './optim';
export { difference } from './difference';
export { mergeExact } from './merge-exact';
export { orthonormalize } from './orthonormalize';

/** First byte after static data: the JS heap starts at or above this. */
export function heapBase(): usize {
  return __heap_base;
}
export { quantize, dequantize } from './quants';
export { QUANT_TMP_BYTES } from './quant-math';
