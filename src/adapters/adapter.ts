/**
 * The Adapter value: a LoRA adapter's modules (resident factor matrices, each with its scale and the
 * layout of the base tensor it changes) and the whole tensors it replaces. Loaders (load.ts) make one
 * from PEFT or kohya files; the algebra (combine, extract, resize) takes and returns them; the planner
 * (plan.ts) decides what one does to a model.
 *
 * Naming. PEFT's `lora_A.weight` [r, in] is our B and `lora_B.weight` [out, r] is our A. Every module
 * is stored so that merging is always W ← W + s·A·B on W as the base file stores it:
 *   nn.Linear        W [out, in]   A = lora_B [out, r]            B = lora_A [r, in]
 *   fan_in_fan_out   W [in, out]   A = lora_Aᵀ [in, r]            B = lora_Bᵀ [r, out]     (ΔW = (lora_B·lora_A)ᵀ)
 *   Embedding        W [num, dim]  A = lora_embedding_Aᵀ [num, r] B = lora_embedding_Bᵀ [r, dim]
 *   kohya 1×1 conv   W [out, in, 1, 1] treated as [out, in]; A = lora_up, B = lora_down
 *   GGUF (llama.cpp) W ne [in, out]  A = lora_b (ne [r, out])     B = lora_a (ne [in, r])  (load-gguf.ts; token_embd differs)
 */
import { LoRAFormatError, LoRATypeError, describeValue } from '../errors.js';
import { type DType, type Matrix, disposeSymbol } from '../memory/matrix.js';

export interface AdapterModule {
  /** The module's name in the base model, e.g. 'distilbert.transformer.layer.0.attention.q_lin' (kohya: 'lora_unet_…'). */
  readonly name: string;
  readonly kind: 'linear' | 'embedding' | 'conv1x1';
  readonly r: number;
  readonly alpha: number;
  /** s: alpha/r, or alpha/√r with rsLoRA. */
  readonly scale: number;
  /** GPT-2's Conv1D: W stored [in, out]. */
  readonly fanInFanOut: boolean;
  /** Ours: ΔW = scale·A·B on W's stored layout. */
  readonly A: Matrix<DType>;
  readonly B: Matrix<DType>;
  /** PEFT lora_bias: scale·biasDelta is added to the base bias `<name>.bias`. */
  readonly biasDelta?: Matrix<DType>;
  // --- DoRA (dora.ts) ---
  /**
   * DoRA's magnitude m, [1, n] (PEFT `lora_magnitude_vector` [out]; LyCORIS `dora_scale` [out, 1] or [1, in]):
   * W′ = (m / (‖V‖ + eps)) ⊙ V with V = W + s·A·B, one norm per row or column of W as stored (magnitudeAxis).
   */
  readonly magnitude?: Matrix<DType>;
  /** 'rows': norms of W's stored rows (PEFT nn.Linear, LyCORIS [out, 1]); 'cols': of its columns (fan_in_fan_out, LyCORIS [1, in]). */
  readonly magnitudeAxis?: 'rows' | 'cols';
  /** Added to every norm: 0 for PEFT, f32's eps 2⁻²³ for LyCORIS (apply_weight_decompose). */
  readonly magnitudeEps?: number;
}

export interface Replacement {
  /** The base tensor's name, e.g. 'classifier.weight'. */
  readonly name: string;
  readonly shape: readonly number[];
  readonly tensor: Matrix<DType>;
}

/** The file format an adapter came from: PEFT, kohya, or llama.cpp's GGUF LoRA. */
export type AdapterFormat = 'peft' | 'kohya' | 'gguf';

export class Adapter {
  readonly format: AdapterFormat;
  readonly modules: readonly AdapterModule[];
  /** Tensors that replace the base tensor of the same name (PEFT modules_to_save, trained biases). */
  readonly replacements: readonly Replacement[];
  /** The adapter_config.json fields as read (PEFT), or {} (kohya). */
  readonly config: Readonly<Record<string, unknown>>;

  /** @internal use lw.loadAdapter */
  constructor(format: AdapterFormat, modules: AdapterModule[], replacements: Replacement[], config: Record<string, unknown>) {
    this.format = format;
    this.modules = modules;
    this.replacements = replacements;
    this.config = config;
  }

  /** Trainable parameters: Σ r·(in + out) over modules. */
  get parameters(): number {
    return this.modules.reduce((s, m) => s + m.A.rows * m.A.cols + m.B.rows * m.B.cols, 0);
  }

  dispose(): void {
    for (const m of this.modules) for (const x of [m.A, m.B, m.biasDelta, m.magnitude]) x?.dispose();
    for (const r of this.replacements) r.tensor.dispose();
  }

  [disposeSymbol](): void {
    this.dispose();
  }
}

export function checkAdapter(x: unknown, fn: string): Adapter {
  if (!(x instanceof Adapter)) throw new LoRATypeError(`${fn}: adapter must be an Adapter from lw.loadAdapter, got ${describeValue(x)}`);
  return x;
}

/** The value that occurs most often in a non-empty list (the first of equals): an adapter's config r and lora_alpha. */
export function mostCommon<T>(xs: readonly T[]): T {
  const counts = new Map<T, number>();
  for (const x of xs) counts.set(x, (counts.get(x) ?? 0) + 1);
  return [...counts].sort((a, b) => b[1] - a[1])[0]![0];
}

/**
 * DoRA modules cannot go where only A, B and s travel (combining, resizing, serving, writing PEFT or
 * kohya factors): their magnitude vector would be dropped and the result silently wrong. Refused by
 * name, saying what to do instead.
 */
export function refuseDora(fn: string, adapter: Adapter, what: string): void {
  const m = adapter.modules.find((x) => x.magnitude);
  if (m) {
    throw new LoRAFormatError(`${fn}: module "${m.name}" is DoRA (it has a magnitude vector), and ${what}; merge it (lw.mergeAdapter, lora-wasm merge) or convert it to a plain LoRA first (lora-wasm convert --adapter … --base … --rank k)`);
  }
}
