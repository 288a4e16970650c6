/**
 * The merge page's worker: reads an adapter (PEFT folder, kohya file or llama.cpp adapter .gguf) and a
 * base model (safetensors or GGUF) from the user's Files (read in slices, never whole), merges tensor by
 * tensor with lw.mergeAdapterFiles, and hands back the merged file as a Blob. The page stays responsive.
 */
import { type Adapter, GgufReader, type LoRAWasm, type MergeFilesOptions, SafetensorsReader, blobSource, init } from '../src/index.js';

export type MergePageRequest =
  | { type: 'inspect'; files: File[] }
  | { type: 'merge'; files: File[]; base: File; dtype: 'keep' | 'f32' | 'f16' | 'bf16' | 'q8_0' };

export type MergePageMessage =
  | { type: 'ready'; build: string; threads: number }
  | { type: 'adapter'; format: string; base: string; params: number; replacements: number; modules: { name: string; kind: string; r: number; alpha: number; scale: number; shape: string; dtype: string }[] }
  | { type: 'progress'; tensors: number; totalTensors: number; bytes: number; totalBytes: number }
  | { type: 'done'; blob: Blob; gguf: boolean; merged: number; replaced: number; seconds: number; peakWasmBytes: number }
  | { type: 'error'; message: string };
const post = (m: MergePageMessage) => (self as unknown as Worker).postMessage(m);

let lw: LoRAWasm;

async function readAdapter(files: File[]): Promise<Adapter> {
  const gguf = files.find((f) => f.name.endsWith('.gguf'));
  if (gguf) return lw.loadAdapter({ weights: blobSource(gguf) });
  const weights = files.find((f) => f.name.endsWith('.safetensors'));
  if (!weights) throw new Error('the adapter needs a .safetensors file (adapter_model.safetensors, or a kohya LoRA)');
  const config = files.find((f) => f.name === 'adapter_config.json');
  return lw.loadAdapter({ weights: blobSource(weights), config: config ? await config.text() : undefined });
}

self.onmessage = async (e: MessageEvent<MergePageRequest>) => {
  const msg = e.data;
  try {
    if (msg.type === 'inspect') {
      const a = await readAdapter(msg.files);
      post({
        type: 'adapter', format: a.format, base: String(a.config.base_model_name_or_path ?? ''), params: a.parameters, replacements: a.replacements.length,
        modules: a.modules.map((m) => ({ name: m.name, kind: m.kind, r: m.r, alpha: m.alpha, scale: m.scale, shape: `[${m.A.rows}, ${m.B.cols}]`, dtype: m.A.dtype })),
      });
      a.dispose();
      return;
    }
    const t0 = performance.now();
    const adapter = await readAdapter(msg.files);
    const magic = new Uint8Array(await msg.base.slice(0, 4).arrayBuffer());
    const gguf = String.fromCharCode(...magic) === 'GGUF';
    const reader = gguf ? await GgufReader.open(blobSource(msg.base)) : await SafetensorsReader.open(blobSource(msg.base));
    const parts: (Uint8Array | Blob)[] = [];
    try {
      // one call for both formats: a GgufReader base takes the GGUF path (q8_0 too)
      const report = await lw.mergeAdapterFiles({
        base: reader as SafetensorsReader, adapter, dtype: msg.dtype as MergeFilesOptions['dtype'],
        // untouched ranges are slices of the input File (no copy); merged tensors are new bytes
        sink: () => ({
          write: async (bytes) => void parts.push(bytes),
          writeRange: async (source, offset, length) => {
            if (!source.blob) return false;
            parts.push(source.blob.slice(offset, offset + length));
            return true;
          },
        }),
        onProgress: (p) => post({ type: 'progress', ...p }),
      });
      post({ type: 'done', blob: new Blob(parts as BlobPart[], { type: 'application/octet-stream' }), gguf, merged: report.merged, replaced: report.replaced, seconds: (performance.now() - t0) / 1000, peakWasmBytes: report.peakWasmBytes });
    } finally {
      adapter.dispose();
    }
  } catch (err) {
    post({ type: 'error', message: (err as Error).message });
  }
};

const simd = new URLSearchParams(self.location.search).get('simd');
// threads: 'auto' — this worker may block, so the pool's waits are Atomics.wait; the page stays responsive
init({ threads: 'auto', ...(simd === 'baseline' || simd === 'relaxed' ? { simd } : {}) }).then((x) => {
  lw = x;
  post({ type: 'ready', build: lw.build, threads: lw.threads });
}, (err) => post({ type: 'error', message: (err as Error).message }));
