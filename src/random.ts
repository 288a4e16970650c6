/**
 * seededRandom(seed): a small deterministic PRNG (mulberry32) returning
 * uniform floats in [0, 1). Same seed, same sequence, in every engine, for
 * reproducible test data, demos and initialisation. It takes seed >>> 0, so seeds are integers in
 * [0, 2³² − 1]; options that take a seed refuse anything else through seedOption (ops/operands.ts)
 * rather than let 1.5 alias 1 or −1 alias 2³² − 1. (This module imports nothing, so it does not check.)
 * see: https://gist.github.com/tommyettinger/46a874533244883189143505d203312c
 */
export function seededRandom(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = Math.imul(a ^ (a >>> 15), a | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Fills `out` with uniform(−bound, bound) or normal(0, std) values from a seeded generator. */
export function fillRandom(out: Float32Array, seed: number, kind: 'uniform' | 'normal', scale: number): void {
  const next = seededRandom(seed);
  if (kind === 'uniform') {
    for (let i = 0; i < out.length; i++) out[i] = (2 * next() - 1) * scale;
    return;
  }
  for (let i = 0; i < out.length; i += 2) {
    // Box–Muller: two independent N(0, 1) from two uniforms
    const u = 1 - next();
    const v = next();
    const rad = Math.sqrt(-2 * Math.log(u)) * scale;
    out[i] = rad * Math.cos(2 * Math.PI * v);
    if (i + 1 < out.length) out[i + 1] = rad * Math.sin(2 * Math.PI * v);
  }
}
