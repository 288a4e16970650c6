// Orthonormal columns for the randomized SVD's sketches (src/adapters/rsvd.ts), in f64.
//
//   q: [m, l] column-major f64 (column j at q + j·m·8), overwritten by an orthonormal basis of its
//   columns: classical Gram–Schmidt twice per column ("twice is enough"), dots and updates two lanes
//   at a time (f64x2). A column that vanishes (a rank-deficient sketch) is left as zeros and
//   reported: the return value is the number of such columns, the caller replaces them.
//   dots: l f64 of scratch.

// @ts-ignore: decorator
@inline
function dot(a: usize, b: usize, m: i32): f64 {
  let acc0 = f64x2.splat(0), acc1 = f64x2.splat(0);
  let i = 0;
  for (; i + 4 <= m; i += 4) {
    const o = <usize>i << 3;
    acc0 = f64x2.add(acc0, f64x2.mul(v128.load(a + o), v128.load(b + o)));
    acc1 = f64x2.add(acc1, f64x2.mul(v128.load(a + o, 16), v128.load(b + o, 16)));
  }
  const acc = f64x2.add(acc0, acc1);
  let s = f64x2.extract_lane(acc, 0) + f64x2.extract_lane(acc, 1);
  for (; i < m; i++) s += load<f64>(a + (<usize>i << 3)) * load<f64>(b + (<usize>i << 3));
  return s;
}

export function orthonormalize(q: usize, m: i32, l: i32, dots: usize): i32 {
  const col = <usize>m << 3;
  let vanished = 0;
  for (let j = 0; j < l; j++) {
    const v = q + <usize>j * col;
    const before = dot(v, v, m);
    for (let pass = 0; pass < 2; pass++) {
      for (let p = 0; p < j; p++) store<f64>(dots + (<usize>p << 3), dot(q + <usize>p * col, v, m));
      for (let p = 0; p < j; p++) {
        const qp = q + <usize>p * col;
        const d = f64x2.splat(load<f64>(dots + (<usize>p << 3)));
        let i = 0;
        for (; i + 2 <= m; i += 2) {
          const o = <usize>i << 3;
          v128.store(v + o, f64x2.sub(v128.load(v + o), f64x2.mul(d, v128.load(qp + o))));
        }
        if (i < m) store<f64>(v + (<usize>i << 3), load<f64>(v + (<usize>i << 3)) - f64x2.extract_lane(d, 0) * load<f64>(qp + (<usize>i << 3)));
      }
    }
    const norm = dot(v, v, m);
    if (norm > 0 && norm > 1e-24 * before) {
      const inv = f64x2.splat(1 / Math.sqrt(norm));
      let i = 0;
      for (; i + 2 <= m; i += 2) v128.store(v + (<usize>i << 3), f64x2.mul(v128.load(v + (<usize>i << 3)), inv));
      if (i < m) store<f64>(v + (<usize>i << 3), load<f64>(v + (<usize>i << 3)) * f64x2.extract_lane(inv, 0));
    } else {
      memory.fill(v, 0, col);
      vanished++;
    }
  }
  return vanished;
}
