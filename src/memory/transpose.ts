/** Transposes of row-major arrays (adapter factors only: O(r·d), never a weight). */

/** x stored [rows, cols] as [cols, rows] (factors only: O(r·d)). */
export function transpose<T extends Float32Array | Uint16Array>(x: T, rows: number, cols: number): T {
  const out = new (x.constructor as new (n: number) => T)(x.length);
  for (let i = 0; i < rows; i++) for (let j = 0; j < cols; j++) out[j * rows + i] = x[i * cols + j]!;
  return out;
}
