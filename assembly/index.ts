// Every kernel the .wasm exports. Kernels take byte pointers into the
// imported memory and sizes; none allocates (src/memory.ts owns the heap).
export { simdFlavour } from './simd';
export { firstNonFinite, absMax, maxRowAbsSum } from './finite';
export { packScaledA, packB, rankRUpdate, MODE_DELTA, MODE_MERGE, MODE_CHECK, TILE_ROWS, TILE_COLS } from './rank';

/** First byte after static data: the JS heap starts at or above this. */
export function heapBase(): usize {
  return __heap_base;
}
