// exp and log in f64 without lookup tables.
//
// AssemblyScript's Math.exp/Math.log use musl's table-driven versions, whose
// tables are active data segments. A shared-memory build is instantiated once
// per worker, and every instantiation re-applies active segments, so the
// kernels keep NO static data at all (test/threads.test.ts checks the .wasm
// has no data section). These are musl's table-free versions (the same code
// AssemblyScript compiles at shrink level ≥ 1), accurate to < 1 ulp.
// see: musl/src/math/exp.c, musl/src/math/log.c (FreeBSD msun, Sun Microsystems copyright).

/** e^x in f64. */
export function exp64(x: f64): f64 {
  const ln2hi = reinterpret<f64>(0x3FE62E42FEE00000);
  const ln2lo = reinterpret<f64>(0x3DEA39EF35793C76);
  const invln2 = reinterpret<f64>(0x3FF71547652B82FE);
  const P1 = reinterpret<f64>(0x3FC555555555553E);
  const P2 = reinterpret<f64>(0xBF66C16C16BEBD93);
  const P3 = reinterpret<f64>(0x3F11566AAF25DE2C);
  const P4 = reinterpret<f64>(0xBEBBBD41C5D26BF1);
  const P5 = reinterpret<f64>(0x3E66376972BEA4D0);
  const overflow = reinterpret<f64>(0x40862E42FEFA39EF);
  const underflow = reinterpret<f64>(0xC0874910D52D3051);
  const Ox1p1023 = reinterpret<f64>(0x7FE0000000000000);
  let hx = <u32>(reinterpret<u64>(x) >> 32);
  const sign = hx >> 31;
  hx &= 0x7FFFFFFF;
  if (hx >= 0x4086232B) {
    if (isNaN(x)) return x;
    if (x > overflow) return x * Ox1p1023;
    if (x < underflow) return 0;
  }
  let hi: f64 = 0;
  let lo: f64 = 0;
  let k = 0;
  // argument reduction: x = k·ln2 + r, |r| ≤ ln2/2
  if (hx > 0x3FD62E42) {
    if (hx >= 0x3FF0A2B2) k = <i32>(invln2 * x + copysign<f64>(0.5, x));
    else k = 1 - (<i32>sign << 1);
    hi = x - <f64>k * ln2hi;
    lo = <f64>k * ln2lo;
    x = hi - lo;
  } else if (hx > 0x3E300000) {
    hi = x;
  } else {
    return 1.0 + x;
  }
  // e^r by a rational approximation (Remez polynomial in r²)
  const xs = x * x;
  const xq = xs * xs;
  const c = x - (xs * P1 + xq * ((P2 + xs * P3) + xq * (P4 + xs * P5)));
  const y = 1.0 + (x * c / (2 - c) - lo + hi);
  return k == 0 ? y : NativeMath.scalbn(y, k);
}

/** ln x in f64. */
export function log64(x: f64): f64 {
  const ln2_hi = reinterpret<f64>(0x3FE62E42FEE00000);
  const ln2_lo = reinterpret<f64>(0x3DEA39EF35793C76);
  const Lg1 = reinterpret<f64>(0x3FE5555555555593);
  const Lg2 = reinterpret<f64>(0x3FD999999997FA04);
  const Lg3 = reinterpret<f64>(0x3FD2492494229359);
  const Lg4 = reinterpret<f64>(0x3FCC71C51D8E78AF);
  const Lg5 = reinterpret<f64>(0x3FC7466496CB03DE);
  const Lg6 = reinterpret<f64>(0x3FC39A09D078C69F);
  const Lg7 = reinterpret<f64>(0x3FC2F112DF3E5244);
  const Ox1p54 = reinterpret<f64>(0x4350000000000000);
  let u = reinterpret<u64>(x);
  let hx = <u32>(u >> 32);
  let k = 0;
  if ((hx >> 31) != 0 || hx < 0x00100000) {
    if (u << 1 == 0) return -1 / (x * x); // log(±0) = -Inf
    if (hx >> 31) return (x - x) / 0.0; // log(x < 0) = NaN
    k -= 54; // subnormal: scale up
    x *= Ox1p54;
    u = reinterpret<u64>(x);
    hx = <u32>(u >> 32);
  } else if (hx >= 0x7FF00000) {
    return x;
  } else if (hx == 0x3FF00000 && u << 32 == 0) {
    return 0;
  }
  // x = 2^k·(1 + f), √2/2 < 1 + f < √2
  hx += 0x3FF00000 - 0x3FE6A09E;
  k += (<i32>hx >> 20) - 0x3FF;
  hx = (hx & 0x000FFFFF) + 0x3FE6A09E;
  u = (<u64>hx << 32) | (u & 0xFFFFFFFF);
  x = reinterpret<f64>(u);
  const f = x - 1.0;
  const hfsq = 0.5 * f * f;
  const s = f / (2.0 + f);
  const z = s * s;
  const w = z * z;
  const t1 = w * (Lg2 + w * (Lg4 + w * Lg6));
  const t2 = z * (Lg1 + w * (Lg3 + w * (Lg5 + w * Lg7)));
  const r = t2 + t1;
  const dk = <f64>k;
  return s * (hfsq + r) + dk * ln2_lo - hfsq + f + dk * ln2_hi;
}
