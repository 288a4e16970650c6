// Every kernel the .wasm exports. Kernels take byte pointers into the
// imported memory and sizes; none allocates (src/memory.ts owns the heap).
export { simdFlavour } from './simd';
export { TILE_ROWS, TILE_COLS, TILE_STORE, TILE_ADD, TILE_CHECK, TILE_AXPBY } from './tile';
export { packA, packB } from './pack';
export { firstNonFinite, absMax, maxRowAbsSum } from './finite';
export { rankRUpdate, MODE_DELTA, MODE_MERGE, MODE_CHECK } from './rank';
export { gemm, gemvT, GEMM_MC, GEMM_KC, GEMM_NC } from './gemm';
export { broadcastRows, columnSums } from './lora';
export { reluForward, reluBackward } from './activation';
export { mseLoss, softmaxCrossEntropy } from './loss';
export { sgdStep, adamwStep } from './optim';

/** First byte after static data: the JS heap starts at or above this. */
export function heapBase(): usize {
  return __heap_base;
}
