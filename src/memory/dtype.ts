/** Element types: f32, IEEE binary16 (f16), bfloat16 (bf16). */
export type DType = 'f32' | 'f16' | 'bf16';
export type HalfDType = 'f16' | 'bf16';
/** What a matrix's `data` is: a Float32Array for f32, the raw Uint16Array of bit patterns for f16 and bf16. */
export type DataOf<D extends DType> = D extends 'f32' ? Float32Array : Uint16Array;

export const DTYPES: readonly DType[] = ['f32', 'f16', 'bf16'];

/** Bytes per element of each dtype: the package's one item-size table. */
export const ITEM_BYTES: Readonly<Record<DType, number>> = { f32: 4, f16: 2, bf16: 2 };
