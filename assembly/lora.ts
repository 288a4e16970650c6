// Row-vector pieces of the linear and LoRA layers (the products themselves are
// gemm and rankUpdate).

/** y[i, :] = bias for every row i of y: [n, m]. Used to start Y = bias + X·Wᵀ (gemm with beta = 1). */
export function broadcastRows(y: usize, bias: usize, n: i32, m: i32): void {
  const rowBytes = <usize>m << 2;
  for (let i = 0; i < n; i++) memory.copy(y + <usize>i * rowBytes, bias, rowBytes);
}

/** out[j] = Σ_i g[i, j] for g: [n, m] (the bias gradient). */
export function columnSums(out: usize, g: usize, n: i32, m: i32): void {
  const rowBytes = <usize>m << 2;
  memory.fill(out, 0, rowBytes);
  for (let i = 0; i < n; i++) {
    const row = g + <usize>i * rowBytes;
    let j = 0;
    for (; j + 4 <= m; j += 4) {
      const o = <usize>j << 2;
      v128.store(out + o, f32x4.add(v128.load(out + o), v128.load(row + o)));
    }
    for (; j < m; j++) {
      const o = <usize>j << 2;
      store<f32>(out + o, load<f32>(out + o) + load<f32>(row + o));
    }
  }
}
