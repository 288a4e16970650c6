// Packing into the k-major panels that tile4x8 (tile.ts) reads.
//
// Left operand L = op(X), [rows, K]; right operand R = op(Y), [K, cols]; op ∈ {N, T}:
//   N: L[i, k] = X[i·ld + k]        T: L[i, k] = X[k·ld + i]      (X stored [K, rows])
//   N: R[k, j] = Y[k·ld + j]        T: R[k, j] = Y[j·ld + k]      (Y stored [cols, K], e.g. nn.Linear's W)
//
//   packA: Ap[rb][k][ii] = alpha·L[i0 + 4·rb + ii, p0 + k]   4-row blocks, zero-padded past `rows`
//   packB: Bp[sb][k][jj] = beta·R[p0 + k, j0 + 8·sb + jj]     8-column strips, zero-padded past `cols`
//
// Full blocks move as f32x4 (transposing 4×4 in registers where the source
// runs along the other axis); only ragged edges go element by element.

// @ts-ignore: decorator
@inline
function transposeStore(r0: v128, r1: v128, r2: v128, r3: v128, dst: usize, stride: usize, scale: v128): void {
  // rows [a0..a3], [b0..b3], [c0..c3], [d0..d3] → columns [a_q b_q c_q d_q] at dst + q·stride
  const t0 = v128.shuffle<f32>(r0, r1, 0, 4, 1, 5);
  const t1 = v128.shuffle<f32>(r0, r1, 2, 6, 3, 7);
  const t2 = v128.shuffle<f32>(r2, r3, 0, 4, 1, 5);
  const t3 = v128.shuffle<f32>(r2, r3, 2, 6, 3, 7);
  v128.store(dst, f32x4.mul(v128.shuffle<f32>(t0, t2, 0, 1, 4, 5), scale), 0);
  v128.store(dst + stride, f32x4.mul(v128.shuffle<f32>(t0, t2, 2, 3, 6, 7), scale), 0);
  v128.store(dst + 2 * stride, f32x4.mul(v128.shuffle<f32>(t1, t3, 0, 1, 4, 5), scale), 0);
  v128.store(dst + 3 * stride, f32x4.mul(v128.shuffle<f32>(t1, t3, 2, 3, 6, 7), scale), 0);
}

/** Packs alpha·L[i0 .. i0+rows, p0 .. p0+kc) into ceil(rows/4) blocks of kc·4 floats at ap. */
export function packA(
  ap: usize, x: usize, ld: i32, trans: i32, i0: i32, rows: i32, p0: i32, kc: i32, alpha: f32,
): void {
  const av = f32x4.splat(alpha);
  const ldb = <usize>ld << 2;
  const blocks = (rows + 3) >> 2;
  for (let rb = 0; rb < blocks; rb++) {
    const block = ap + (<usize>rb * <usize>kc << 4);
    const i = i0 + (rb << 2);
    const full = (rb << 2) + 4 <= rows;
    if (full && trans) {
      // L[i..i+4, k] = X[k, i..i+4]: contiguous
      let src = x + <usize>p0 * ldb + (<usize>i << 2);
      for (let k = 0; k < kc; k++) {
        v128.store(block + (<usize>k << 4), f32x4.mul(v128.load(src), av));
        src += ldb;
      }
    } else if (full) {
      // four rows of X, transposed 4 k at a time
      const s0 = x + <usize>i * ldb + (<usize>p0 << 2);
      let k = 0;
      for (; k + 4 <= kc; k += 4) {
        const o = <usize>k << 2;
        transposeStore(
          v128.load(s0 + o), v128.load(s0 + ldb + o), v128.load(s0 + 2 * ldb + o), v128.load(s0 + 3 * ldb + o),
          block + (<usize>k << 4), 16, av,
        );
      }
      for (; k < kc; k++) {
        for (let ii = 0; ii < 4; ii++) {
          store<f32>(block + (<usize>k << 4) + (<usize>ii << 2), alpha * load<f32>(s0 + <usize>ii * ldb + (<usize>k << 2)));
        }
      }
    } else {
      for (let ii = 0; ii < 4; ii++) {
        const dst = block + (<usize>ii << 2);
        if ((rb << 2) + ii < rows) {
          for (let k = 0; k < kc; k++) {
            const off = trans ? (<usize>(p0 + k) * <usize>ld + <usize>(i + ii)) : (<usize>(i + ii) * <usize>ld + <usize>(p0 + k));
            store<f32>(dst + (<usize>k << 4), alpha * load<f32>(x + (off << 2)));
          }
        } else {
          for (let k = 0; k < kc; k++) store<f32>(dst + (<usize>k << 4), 0);
        }
      }
    }
  }
}

/** Packs beta·R[p0 .. p0+kc, j0 .. j0+cols) into ceil(cols/8) strips of kc·8 floats at bp. */
export function packB(
  bp: usize, y: usize, ld: i32, trans: i32, p0: i32, kc: i32, j0: i32, cols: i32, beta: f32,
): void {
  const bv = f32x4.splat(beta);
  const scaled = beta != 1;
  const ldb = <usize>ld << 2;
  const strips = (cols + 7) >> 3;
  for (let sb = 0; sb < strips; sb++) {
    const strip = bp + (<usize>sb * <usize>kc << 5);
    const j = j0 + (sb << 3);
    const full = (sb << 3) + 8 <= cols;
    if (full && !trans) {
      let src = y + <usize>p0 * ldb + (<usize>j << 2);
      for (let k = 0; k < kc; k++) {
        const dst = strip + (<usize>k << 5);
        if (scaled) {
          v128.store(dst, f32x4.mul(v128.load(src, 0), bv), 0);
          v128.store(dst, f32x4.mul(v128.load(src, 16), bv), 16);
        } else {
          v128.store(dst, v128.load(src, 0), 0);
          v128.store(dst, v128.load(src, 16), 16);
        }
        src += ldb;
      }
    } else if (full) {
      // R[k, j..j+8] = Y[j..j+8, k]: eight rows of Y, transposed 4 k at a time per half
      const s0 = y + <usize>j * ldb + (<usize>p0 << 2);
      const s4 = s0 + 4 * ldb;
      let k = 0;
      for (; k + 4 <= kc; k += 4) {
        const o = <usize>k << 2;
        const dst = strip + (<usize>k << 5);
        transposeStore(v128.load(s0 + o), v128.load(s0 + ldb + o), v128.load(s0 + 2 * ldb + o), v128.load(s0 + 3 * ldb + o), dst, 32, bv);
        transposeStore(v128.load(s4 + o), v128.load(s4 + ldb + o), v128.load(s4 + 2 * ldb + o), v128.load(s4 + 3 * ldb + o), dst + 16, 32, bv);
      }
      for (; k < kc; k++) {
        for (let jj = 0; jj < 8; jj++) {
          store<f32>(strip + (<usize>k << 5) + (<usize>jj << 2), beta * load<f32>(s0 + <usize>jj * ldb + (<usize>k << 2)));
        }
      }
    } else {
      for (let k = 0; k < kc; k++) {
        const dst = strip + (<usize>k << 5);
        for (let jj = 0; jj < 8; jj++) {
          let v: f32 = 0;
          if ((sb << 3) + jj < cols) {
            const off = trans ? (<usize>(j + jj) * <usize>ld + <usize>(p0 + k)) : (<usize>(p0 + k) * <usize>ld + <usize>(j + jj));
            v = beta * load<f32>(y + (off << 2));
          }
          store<f32>(dst + (<usize>jj << 2), v);
        }
      }
    }
  }
}
