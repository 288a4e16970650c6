/**
 * The uvu suites, run inside a browser page (scripts/test-browser.mjs bundles
 * this file with esbuild and drives headless Chromium). The flavour comes
 * from ?simd=baseline|relaxed. Suites that need Node itself (child
 * processes, the file system, Node flags) stay in the Node runs only.
 */
const g = globalThis as unknown as Record<string, unknown> & { UVU_QUEUE: unknown[][] };
g.UVU_DEFER = 1; // queue the suites; exec() below runs them, as uvu's CLI does
g.UVU_QUEUE = [];
g.LORA_BUILD = new URLSearchParams(location.search).get('simd') ?? 'relaxed';

const suites: [string, () => Promise<unknown>][] = [
  ['rank.test.ts', () => import('../rank.test.js')],
  ['seed.test.ts', () => import('../seed.test.js')],
  ['errors.test.ts', () => import('../errors.test.js')],
  ['memory.test.ts', () => import('../memory.test.js')],
  ['gemm.test.ts', () => import('../gemm.test.js')],
  ['lora.test.ts', () => import('../lora.test.js')],
  ['optim.test.ts', () => import('../optim.test.js')],
  ['train.test.ts', () => import('../train.test.js')],
  ['layers.test.ts', () => import('../layers.test.js')],
  ['reliability.test.ts', () => import('../reliability.test.js')],
  ['convert.test.ts', () => import('../convert.test.js')],
  ['half.test.ts', () => import('../half.test.js')],
  ['safetensors.test.ts', () => import('../safetensors.test.js')],
  ['peft.test.ts', () => import('../peft.test.js')],
  ['threads.test.ts', () => import('../threads.test.js')],
  ['adapters.test.ts', () => import('../adapters.test.js')],
  ['adapter-set.test.ts', () => import('../adapter-set.test.js')],
  ['plan.test.ts', () => import('../plan.test.js')],
  ['tensors.test.ts', () => import('../tensors.test.js')],
];

window.addEventListener('error', (e) => console.error(`LORA_PAGE_ERROR ${e.message}`));
window.addEventListener('unhandledrejection', (e) => console.error(`LORA_PAGE_ERROR ${String(e.reason?.stack ?? e.reason)}`));

const fallbackPage = new URLSearchParams(location.search).has('fallback');
if (fallbackPage) {
  // A page without cross-origin isolation: threads fall back to 1, with one console warning.
  const warnings: string[] = [];
  const warn = console.warn;
  console.warn = (...args: unknown[]) => {
    warnings.push(args.join(' '));
    warn(...args);
  };
  const { init } = await import('../../src/index.js');
  const a = await init({ simd: 'relaxed', threads: 2 });
  const b = await init({ simd: 'relaxed', threads: 'auto' });
  const W = a.matrix(64, 64);
  a.merge(W, a.matrix(64, 2, new Float32Array(128).fill(1)), a.matrix(2, 64, new Float32Array(128).fill(0.5)));
  console.log(`LORA_FALLBACK ${JSON.stringify({
    isolated: globalThis.crossOriginIsolated, threads: [a.threads, b.threads], note: a.threadsNote ?? '', warnings, w00: W.data[0],
  })}`);
} else {
  const { exec } = await import('uvu');
  for (let i = 0; i < suites.length; i++) {
    g.UVU_INDEX = i;
    g.UVU_QUEUE.push([suites[i]![0]]);
    await suites[i]![1]();
  }
  await exec();
  console.log('LORA_BROWSER_TESTS_DONE');
}
