// The rank-r kernels' shape set, shared by the f32 and the half-precision suites.
import { randInt, rng } from './helpers.js';

export interface Shape {
  dOut: number;
  dIn: number;
  r: number;
}

/** Edges the 4×8 tile must get right, r = 1, r = min(dOut, dIn), and r = 512. */
export const EDGE_SHAPES: Shape[] = [
  { dOut: 1, dIn: 1, r: 1 }, { dOut: 1, dIn: 9, r: 1 }, { dOut: 9, dIn: 1, r: 1 }, { dOut: 4, dIn: 8, r: 1 },
  { dOut: 4, dIn: 8, r: 4 }, { dOut: 5, dIn: 9, r: 3 }, { dOut: 3, dIn: 7, r: 3 }, { dOut: 8, dIn: 4, r: 4 },
  { dOut: 13, dIn: 17, r: 13 }, { dOut: 33, dIn: 31, r: 31 }, { dOut: 64, dIn: 64, r: 64 }, { dOut: 7, dIn: 7, r: 7 },
  { dOut: 512, dIn: 1, r: 1 }, { dOut: 1, dIn: 1000, r: 1 }, { dOut: 100, dIn: 3, r: 3 }, { dOut: 2, dIn: 2, r: 2 },
  { dOut: 520, dIn: 515, r: 512 }, { dOut: 96, dIn: 2050, r: 64 }, { dOut: 300, dIn: 257, r: 1 },
];

function randomShapes(count: number, seed: number): Shape[] {
  const r = rng(seed);
  const out: Shape[] = [];
  for (let i = 0; i < count; i++) {
    const big = i % 10 === 0;
    const dOut = randInt(r, 1, big ? 300 : 70);
    const dIn = randInt(r, 1, big ? 300 : 70);
    const m = Math.min(dOut, dIn);
    const pick = i % 4;
    const rank = pick === 0 ? 1 : pick === 1 ? m : randInt(r, 1, Math.min(m, 48));
    out.push({ dOut, dIn, r: rank });
  }
  return out;
}

/** The shape set every rank-r kernel test runs on (229 shapes). */
export const SHAPES: Shape[] = [...EDGE_SHAPES, ...randomShapes(210, 20261129)];

