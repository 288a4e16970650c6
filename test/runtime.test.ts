import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import http from 'node:http';
import { fileURLToPath } from 'node:url';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { LoRAEnvironmentError, LoRAError, LoRAFormatError, LoRATypeError, Matrix, detectFeatures, init, loraScale, seededRandom } from '../src/index.js';
import { MAX_PAGES } from '../src/memory/heap.js';
import { Epilogue, GEMM_KC, GEMM_MC, GEMM_NC, TILE_COLS, TILE_ROWS } from '../src/kernel/kernels.js';
import { BUILD, assertRejectsTyped, assertThrowsTyped, lwUnderTest } from './helpers.js';
import { sharedVariant } from '../src/runtime/shared-variant.js';
import { AUTO_THREADS_CAP } from '../src/runtime/load.js';

const wasmBytes = (build: string) => readFileSync(new URL(`../build/lora-${build}.wasm`, import.meta.url));
/** A valid module that imports memory like ours but exports no kernel. */
const notLoRA = new Uint8Array([
  0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, 0x02, 0x0f, 0x01, 0x03, 0x65, 0x6e, 0x76, 0x06, 0x6d, 0x65, 0x6d, 0x6f, 0x72, 0x79, 0x02, 0x00, 0x01,
]);
const relaxedFlag = process.execArgv.includes('--experimental-wasm-relaxed-simd');

test('detectFeatures sees SIMD, and relaxed SIMD exactly when Node 20 has the flag', () => {
  const f = detectFeatures();
  assert.ok(f.simd);
  if (Number(process.versions.node.split('.')[0]) < 22) assert.is(f.relaxed, relaxedFlag);
});

test('init() is memoised per options and reports the flavour that runs', async () => {
  const a = await init({ build: BUILD });
  const b = await init({ build: BUILD });
  assert.is(a, b, 'same options, same instance');
  assert.is(a.build, BUILD);
  const auto = await init();
  assert.is(auto, await init(), 'init() with no options is memoised too');
  assert.is(auto.build, detectFeatures().relaxed ? 'relaxed' : 'baseline', "'auto' prefers relaxed where available");
});

test("threads default to 'auto' (every core, at most 8); threads: 1 opts out; one module of the caller's runs on 1 thread", async () => {
  const cores = Math.min(AUTO_THREADS_CAP, availableParallelism());
  const auto = await init();
  assert.is(auto.threads, cores, 'init() uses every core');
  assert.is(auto, await init({ threads: 'auto' }), "the default is the same instance as threads: 'auto'");
  assert.is((await init({ build: BUILD })).threads, cores, 'also with other options');
  const one = await init({ build: BUILD, threads: 1 });
  assert.is(one.threads, 1);
  assert.is(one.workerPool, undefined, 'threads: 1 starts no worker');
  const given = await init({ wasm: wasmBytes(BUILD), build: BUILD });
  assert.is(given.threads, 1, 'a single module given as options.wasm runs as given (a single-thread build)');
  const map = await init({ wasm: { [BUILD]: wasmBytes(BUILD), [`${BUILD}-threads`]: wasmBytes(`${BUILD}-threads`) }, build: BUILD });
  assert.is(map.threads, cores, 'a map with the threads build gets every core');
});

test('without shared memory, the default falls back to 1 thread quietly; threads asked for say so once', async () => {
  const saved = globalThis.SharedArrayBuffer;
  const warned: string[] = [];
  const warn = console.warn;
  console.warn = (m: string) => void warned.push(m);
  try {
    // @ts-expect-error: a page that is not cross-origin isolated has no SharedArrayBuffer
    globalThis.SharedArrayBuffer = undefined;
    const quiet = await init({ build: BUILD, maxMemoryBytes: 2 ** 26 + 2 ** 16 });
    assert.is(quiet.threads, 1);
    assert.match(quiet.threadsNote ?? '', 'SharedArrayBuffer is not available');
    assert.equal(warned, [], 'no warning for the default');
    const asked = await init({ build: BUILD, threads: 2, maxMemoryBytes: 2 ** 26 + 2 ** 17 });
    assert.is(asked.threads, 1);
    assert.is(warned.length, 1, 'threads: 2 that cannot be had is said once');
    assert.match(warned[0]!, 'running on 1 thread instead of 2');
  } finally {
    globalThis.SharedArrayBuffer = saved;
    console.warn = warn;
  }
});

test('the CLI start-up (bin/launch.mjs) turns relaxed SIMD on, so init() picks the relaxed build on Node 20 without flags', () => {
  const script = `
    import { enableRelaxedSimd } from './bin/launch.mjs';
    import { init } from './src/index.ts';
    const lw = await init({ threads: 2 });
    console.log(enableRelaxedSimd(), lw.build, lw.threads);`;
  const run = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], {
    cwd: fileURLToPath(new URL('..', import.meta.url)), encoding: 'utf8', timeout: 30_000, env: { ...process.env, LORA_BUILD: '', NODE_OPTIONS: '', FORCE_COLOR: '0' },
  });
  assert.is(run.status, 0, run.stderr);
  assert.is(run.stdout.trim(), 'true relaxed 2', 'relaxed on this thread and in the workers (the pool ran init to the end)');
});

test("build: 'relaxed' (and its alias simd) fails with a LoRAEnvironmentError where the engine lacks it", async () => {
  if (detectFeatures().relaxed) return;
  for (const opts of [{ build: 'relaxed' }, { simd: 'relaxed' }] as const) {
    await assertRejectsTyped(init(opts), LoRAEnvironmentError, ['--experimental-wasm-relaxed-simd']);
  }
});

test('init({ build }) names the build as lw.build does; simd is an alias for it', async () => {
  const lw = await init({ build: BUILD });
  assert.is(lw.build, BUILD);
  assert.is(await init({ simd: BUILD }), lw, 'the alias gives the same (memoised) instance');
  assert.is(await init({ build: BUILD, simd: BUILD }), lw, 'both, agreeing');
  await assertRejectsTyped(init({ build: 'relaxed', simd: 'baseline' }), LoRATypeError, ['options.build', 'options.simd']);
  await assertRejectsTyped(init({ build: 'fast' as 'auto' }), LoRATypeError, ["options.build must be 'auto', 'relaxed' or 'baseline'"]);
});

test('init accepts the module as bytes, as a compiled Module, and as a per-flavour map', async () => {
  const bytes = wasmBytes('baseline');
  const fromBytes = await init({ wasm: bytes });
  assert.is(fromBytes.build, 'baseline', 'flavour read from the module itself');
  const fromModule = await init({ wasm: new WebAssembly.Module(bytes), build: 'baseline' });
  assert.is(fromModule.build, 'baseline');
  assert.is.not(fromModule, fromBytes, 'user-given modules are not shared');
  const fromMap = await init({ wasm: { baseline: bytes }, build: 'baseline' });
  using m = fromMap.matrix(2, 2, [1, 2, 3, 4]);
  assert.equal(Array.from(m.toArray()), [1, 2, 3, 4]);
  const fromUrl = await init({ wasm: new URL('../build/lora-baseline.wasm', import.meta.url), build: 'baseline' });
  assert.is(fromUrl.build, 'baseline');
  const fromPath = await init({ wasm: fileURLToPath(new URL('../build/lora-baseline.wasm', import.meta.url)) });
  assert.is(fromPath.build, 'baseline', 'a file path string works in Node');
});

test('init fetches http(s) URLs: streaming for application/wasm, bytes otherwise, and a 404 is a LoRAError', async () => {
  const bytes = wasmBytes('baseline');
  const server = http.createServer((req, res) => {
    if (req.url === '/streamed.wasm') res.writeHead(200, { 'content-type': 'application/wasm' }).end(bytes);
    else if (req.url === '/plain.bin') res.writeHead(200, { 'content-type': 'application/octet-stream' }).end(bytes);
    else res.writeHead(404).end();
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const base = `http://127.0.0.1:${(server.address() as { port: number }).port}`;
  try {
    for (const path of ['/streamed.wasm', '/plain.bin']) {
      const lw = await init({ wasm: `${base}${path}`, build: 'baseline' });
      using m = lw.matrix(1, 2, [3, 4]);
      assert.equal(Array.from(m.data), [3, 4], path);
    }
    try {
      await init({ wasm: `${base}/missing.wasm` });
      assert.unreachable('a 404 loaded');
    } catch (e) {
      assert.instance(e, LoRAEnvironmentError);
      assert.match((e as Error).message, /answered 404.*check the URL given in init\(\{ wasm \}\)/);
    }
  } finally {
    await new Promise((resolve) => server.close(resolve));
  }
});

test('init rejects bad options and mismatched modules with typed errors', async () => {
  const cases: [Parameters<typeof init>[0], new (...a: never[]) => Error, RegExp][] = [
    [{ simd: 'fast' as 'auto' }, LoRATypeError, /options.simd must be 'auto', 'relaxed' or 'baseline', got "fast"/],
    [{ wasm: { relaxed: wasmBytes('relaxed') }, build: 'baseline' }, LoRATypeError, /options.wasm has no 'baseline' entry/],
    [{ wasm: new Uint8Array([0, 1, 2, 3]) }, LoRAFormatError, /could not load the .* lora-wasm module/],
    [{ wasm: new URL('file:///nonexistent/lora.wasm') }, LoRAEnvironmentError, /could not load/],
    [{ wasm: notLoRA }, LoRAFormatError, /not a lora-wasm module of this version/],
  ];
  if (detectFeatures().relaxed) {
    cases.push([{ wasm: wasmBytes('relaxed'), build: 'baseline' }, LoRATypeError, /is the relaxed build/]);
    cases.push([{ wasm: wasmBytes('baseline'), simd: 'relaxed' }, LoRATypeError, /options.simd is 'relaxed' but the given wasm module is the baseline build/]);
  }
  for (const [opts, cls, re] of cases) {
    try {
      await init(opts);
      assert.unreachable(`accepted ${JSON.stringify(opts)}`);
    } catch (e) {
      assert.instance(e, cls);
      assert.match((e as Error).message, re);
    }
  }
});

test('sharedVariant refuses a module it cannot make shared with a LoRAFormatError', () => {
  assertThrowsTyped(() => sharedVariant(notLoRA), LoRAFormatError, ['sharedVariant:', 'limits flag is 0']);
  assertThrowsTyped(() => sharedVariant(new Uint8Array([0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00])), LoRAFormatError, ['imports no memory']);
  assertThrowsTyped(() => sharedVariant(notLoRA.subarray(0, 10)), LoRAFormatError, ['LEB128']);
});

test('Matrix cannot be constructed from outside', () => {
  try {
    new (Matrix as unknown as new (...a: unknown[]) => unknown)(Symbol('x'), null, 0, 1, 1);
    assert.unreachable('constructed');
  } catch (e) {
    assert.instance(e, LoRATypeError);
    assert.match((e as Error).message, /lw\.matrix/);
  }
});

test('constants mirrored between assembly/ and src/ agree', async () => {
  const memory = new WebAssembly.Memory({ initial: 1, maximum: MAX_PAGES });
  for (const build of ['baseline', 'relaxed']) {
    if (build === 'relaxed' && !detectFeatures().relaxed) continue;
    const { instance } = await WebAssembly.instantiate(wasmBytes(build), { env: { memory, abort() {} } });
    const g = (name: string) => (instance.exports[name] as WebAssembly.Global).value as number;
    assert.is(g('EPILOGUE_STORE'), Epilogue.Store);
    assert.is(g('EPILOGUE_ADD'), Epilogue.Add);
    assert.is(g('EPILOGUE_CHECK'), Epilogue.Check);
    assert.is(g('EPILOGUE_AXPBY'), Epilogue.Axpby);
    assert.is(g('TILE_ROWS'), TILE_ROWS);
    assert.is(g('TILE_COLS'), TILE_COLS);
    assert.is(g('GEMM_MC'), GEMM_MC, 'the kernel layer sizes the GEMM scratch from these');
    assert.is(g('GEMM_KC'), GEMM_KC);
    assert.is(g('GEMM_NC'), GEMM_NC);
  }
  const asconfig = JSON.parse(readFileSync(new URL('../asconfig.json', import.meta.url), 'utf8'));
  assert.is(asconfig.options.maximumMemory, MAX_PAGES);
});

test('the loaded module exports nothing but kernels over pointers (no managed runtime)', async () => {
  const module = new WebAssembly.Module(wasmBytes('baseline'));
  const imports = WebAssembly.Module.imports(module).map((i) => `${i.module}.${i.name}:${i.kind}`);
  assert.equal(imports, ['env.memory:memory'], 'memory is imported, ready to be shared');
  const names = WebAssembly.Module.exports(module).map((e) => e.name);
  assert.not.ok(names.some((n) => n.startsWith('__new') || n.startsWith('__pin')), 'no GC runtime exports');
  await lwUnderTest();
});

test('seededRandom is deterministic, in [0, 1), and uniform', () => {
  const a = seededRandom(42), b = seededRandom(42), c = seededRandom(43);
  const xs = Array.from({ length: 20000 }, () => a());
  assert.equal(xs.slice(0, 5), Array.from({ length: 5 }, () => b()), 'same seed, same sequence');
  assert.is.not(xs[0], c(), 'another seed, another sequence');
  assert.ok(xs.every((x) => x >= 0 && x < 1));
  const mean = xs.reduce((p, x) => p + x, 0) / xs.length;
  assert.ok(Math.abs(mean - 0.5) < 0.01, `mean ${mean}`);
  const low = xs.filter((x) => x < 0.1).length / xs.length;
  assert.ok(Math.abs(low - 0.1) < 0.01, `P(x < 0.1) = ${low}`);
});

test('loraScale gives alpha/r, or alpha/√r for rsLoRA, and checks its inputs', () => {
  assert.is(loraScale({ alpha: 16, r: 8 }), 2);
  assert.is(loraScale({ alpha: 16, r: 64, rslora: true }), 2);
  assert.is(loraScale({ alpha: 1, r: 3 }), 1 / 3);
  for (const bad of [{ alpha: Number.NaN, r: 8 }, { alpha: '16' as unknown as number, r: 8 }]) {
    try {
      loraScale(bad);
      assert.unreachable();
    } catch (e) {
      assert.instance(e, LoRATypeError);
      assert.match((e as Error).message, /loraScale: alpha/);
    }
  }
  for (const r of [0, 2.5, -1]) {
    try {
      loraScale({ alpha: 8, r });
      assert.unreachable();
    } catch (e) {
      assert.instance(e, LoRAError);
      assert.match((e as Error).message, /loraScale: r must be a positive integer/);
    }
  }
});

test.run();
