/**
 * seededRandom(seed): a small deterministic PRNG (mulberry32) returning
 * uniform floats in [0, 1). Same seed, same sequence, in every engine, for
 * reproducible test data, demos and initialisation.
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
