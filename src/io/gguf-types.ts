/**
 * ggml tensor types: THE table (ids, names, block size, bytes per block) for GGUF readers, writers
 * and the quantization kernels (src/gguf/quant.ts imports it; do not copy it).
 *
 * A tensor of type t with ne[0] elements per row (ne[0] a multiple of blockSize) stores each row as
 * ne[0] / blockSize blocks of typeSize bytes:  bytes = (ne[0]·ne[1]·ne[2]·ne[3] / blockSize) · typeSize.
 * Names are gguf-py's (`GGMLQuantizationType`); ggml's own `ggml_type_name` is the lower-case form.
 * Ids missing here were removed from ggml (4, 5: Q4_2, Q4_3; 31–33, 36–38: the repacked Q4_0_x_y and
 * IQ4_NL_x_y, repacked at load time now) and are refused in files.
 * see: ggml/include/ggml.h (enum ggml_type), ggml/src/ggml.c (type_traits), gguf-py/gguf/constants.py
 * (GGML_QUANT_SIZES). Checked against ggml_type_size / ggml_blck_size of the libggml-base.so that
 * node-llama-cpp 3.21.1 ships (llama.cpp bundled as its v0.4.0 release).
 */

export interface GgmlType {
  /** The id stored in a GGUF tensor info (enum ggml_type). */
  readonly id: number;
  /** gguf-py's name: 'F32', 'Q4_K', 'IQ2_XXS', 'BF16'… */
  readonly name: GgmlTypeName;
  /** Elements per block (1 for the plain types, 32 for Q4_0…, 256 for the K-quants…). */
  readonly blockSize: number;
  /** Bytes per block. */
  readonly typeSize: number;
  /** True for the block-quantized types (ggml_is_quantized). */
  readonly quantized: boolean;
}

/** id, name, block size, type size: in id order. */
const TABLE = [
  [0, 'F32', 1, 4], [1, 'F16', 1, 2],
  [2, 'Q4_0', 32, 18], [3, 'Q4_1', 32, 20], [6, 'Q5_0', 32, 22], [7, 'Q5_1', 32, 24], [8, 'Q8_0', 32, 34], [9, 'Q8_1', 32, 36],
  [10, 'Q2_K', 256, 84], [11, 'Q3_K', 256, 110], [12, 'Q4_K', 256, 144], [13, 'Q5_K', 256, 176], [14, 'Q6_K', 256, 210], [15, 'Q8_K', 256, 292],
  [16, 'IQ2_XXS', 256, 66], [17, 'IQ2_XS', 256, 74], [18, 'IQ3_XXS', 256, 98], [19, 'IQ1_S', 256, 50], [20, 'IQ4_NL', 32, 18],
  [21, 'IQ3_S', 256, 110], [22, 'IQ2_S', 256, 82], [23, 'IQ4_XS', 256, 136],
  [24, 'I8', 1, 1], [25, 'I16', 1, 2], [26, 'I32', 1, 4], [27, 'I64', 1, 8], [28, 'F64', 1, 8],
  [29, 'IQ1_M', 256, 56], [30, 'BF16', 1, 2], [34, 'TQ1_0', 256, 54], [35, 'TQ2_0', 256, 66],
  [39, 'MXFP4', 32, 17], [40, 'NVFP4', 64, 36], [41, 'Q1_0', 128, 18], [42, 'Q2_0', 64, 18],
] as const;

export type GgmlTypeName = (typeof TABLE)[number][1];

const PLAIN = new Set<string>(['F32', 'F16', 'BF16', 'F64', 'I8', 'I16', 'I32', 'I64']);

/** Every type a GGUF file may hold, in id order. */
export const GGML_TYPES: readonly GgmlType[] = Object.freeze(
  TABLE.map(([id, name, blockSize, typeSize]) => Object.freeze({ id, name, blockSize, typeSize, quantized: !PLAIN.has(name) })),
);

/** Type ids by name: GGML_TYPE.Q8_0 === 8. */
export const GGML_TYPE = Object.freeze(Object.fromEntries(TABLE.map(([id, name]) => [name, id]))) as { readonly [K in GgmlTypeName]: Extract<(typeof TABLE)[number], readonly [number, K, number, number]>[0] };

/** ggml_type ids that existed and were removed, with ggml's reason (a file holding one is refused). */
export const REMOVED_GGML_TYPES: ReadonlyMap<number, string> = new Map([
  [4, 'Q4_2 (removed from ggml)'], [5, 'Q4_3 (removed from ggml)'],
  [31, 'Q4_0_4_4 (removed: use Q4_0, repacked at load time)'], [32, 'Q4_0_4_8 (removed: use Q4_0, repacked at load time)'], [33, 'Q4_0_8_8 (removed: use Q4_0, repacked at load time)'],
  [36, 'IQ4_NL_4_4 (removed: use IQ4_NL, repacked at load time)'], [37, 'IQ4_NL_4_8 (removed: use IQ4_NL, repacked at load time)'], [38, 'IQ4_NL_8_8 (removed: use IQ4_NL, repacked at load time)'],
]);

const BY_ID = new Map<number, GgmlType>(GGML_TYPES.map((t) => [t.id, t]));
const BY_NAME = new Map<string, GgmlType>(GGML_TYPES.map((t) => [t.name, t]));

/** The type with this id or name (names as gguf-py spells them, case-insensitive), or undefined. */
export function ggmlType(idOrName: number | string): GgmlType | undefined {
  return typeof idOrName === 'number' ? BY_ID.get(idOrName) : BY_NAME.get(String(idOrName).toUpperCase());
}

/**
 * Bytes of a tensor of `type` with dimensions `ne` (innermost first; any order gives the same
 * product), or undefined when ne[0] is not a multiple of the block size. Exact while the element
 * count is within 2^53 (the callers check that).
 */
export function ggmlBytes(type: GgmlType, ne: readonly number[]): number | undefined {
  const ne0 = ne[0] ?? 1;
  if (ne0 % type.blockSize !== 0) return undefined;
  let blocks = ne0 / type.blockSize;
  for (let j = 1; j < ne.length; j++) blocks *= ne[j]!;
  return blocks * type.typeSize;
}
