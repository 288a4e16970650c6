/**
 * The cases lora-wasm and the onnxruntime peers both run (bench/onnxruntime.bench.ts times
 * lora-wasm, bench/peers/onnxruntime.ts the peers): the same seeded data, the same float64
 * reference, and the one-node ONNX graph a runtime user would write for each.
 */
import { linearElement, rankElement } from '../../test/reference.js';
import { random } from '../common.js';
import type { OnnxGraph } from './onnx.js';

export interface OrtCase {
  id: string;
  /** Table shape label. */
  label: string;
  kind: 'linear' | 'merge';
  /** linear: Y[n, m] = X[n, k]·W[m, k]ᵀ. merge: Y = W[m, k] + s·A[m, n]·B[n, k] (n is the rank). */
  n: number;
  m: number;
  k: number;
  reps: { quick: number; full: number };
}

export const ORT_S = 0.5;

export const ORT_CASES: OrtCase[] = [
  { id: 'gemm', label: 'GEMM 256×4096×4096, Y = X·Wᵀ', kind: 'linear', n: 256, m: 4096, k: 4096, reps: { quick: 3, full: 9 } },
  { id: 'gemv', label: 'GEMV 1×4096 · (4096×4096)ᵀ', kind: 'linear', n: 1, m: 4096, k: 4096, reps: { quick: 20, full: 60 } },
  { id: 'merge8', label: 'merge 4096×4096 r=8, W + s·A·B', kind: 'merge', n: 8, m: 4096, k: 4096, reps: { quick: 5, full: 15 } },
  { id: 'merge16', label: 'merge 4096×4096 r=16, W + s·A·B', kind: 'merge', n: 16, m: 4096, k: 4096, reps: { quick: 5, full: 15 } },
];

export interface CaseData {
  /** Operands by name: linear X, W; merge W, A, B. */
  arrays: Record<string, Float32Array>;
  graph: OnnxGraph;
  /** What is fed per run (the rest are initializers: weights a runtime may prepack once). */
  feeds: { name: string; shape: number[]; data: Float32Array }[];
  rows: number;
  cols: number;
  /** Inner dimension, for the tolerance. */
  k: number;
  want: (i: number, j: number) => { value: number; mag: number };
}

/**
 * linear: Gemm(X, W, transB = 1) with W an initializer, as an exported nn.Linear is (onnxruntime packs
 * it once at session creation). merge: Gemm(A, B, W, alpha = s, beta = 1) with every operand fed,
 * because a merge takes whatever W the caller holds; one fused node, onnxruntime's best form of
 * W + s·A·B (MatMul → Mul → Add would make two more passes over W).
 */
export function caseData(c: OrtCase): CaseData {
  const { n, m, k } = c;
  if (c.kind === 'linear') {
    const x = random(n * k, 11 + n), w = random(m * k, 12);
    return {
      arrays: { X: x, W: w },
      graph: {
        inputs: [{ name: 'X', shape: [n, k] }],
        initializers: [{ name: 'W', shape: [m, k], data: w }],
        nodes: [{ op: 'Gemm', inputs: ['X', 'W'], output: 'Y', attrs: { transB: 1 } }],
        output: { name: 'Y', shape: [n, m] },
      },
      feeds: [{ name: 'X', shape: [n, k], data: x }],
      rows: n, cols: m, k, want: linearElement(x, w, n, m, k),
    };
  }
  const r = n;
  const w = random(m * k, m + k + r, 0.05), a = random(m * r, 2 * r + 1, 0.02), b = random(r * k, 3 * r + 7, 0.05);
  return {
    arrays: { W: w, A: a, B: b },
    graph: {
      inputs: [{ name: 'A', shape: [m, r] }, { name: 'B', shape: [r, k] }, { name: 'W', shape: [m, k] }],
      nodes: [{ op: 'Gemm', inputs: ['A', 'B', 'W'], output: 'Y', attrs: { alpha: ORT_S, beta: 1 } }],
      output: { name: 'Y', shape: [m, k] },
    },
    feeds: [{ name: 'A', shape: [m, r], data: a }, { name: 'B', shape: [r, k], data: b }, { name: 'W', shape: [m, k], data: w }],
    rows: m, cols: k, k: r, want: rankElement(w, a, b, m, r, k, ORT_S),
  };
}

export const caseFlops = (c: OrtCase): number => 2 * c.n * c.m * c.k;
/** Bytes of the output written (linear) or of W read and written (merge), as the other tables count. */
export const caseBytes = (c: OrtCase): number => (c.kind === 'linear' ? 4 * c.n * c.m : 8 * c.m * c.k);
