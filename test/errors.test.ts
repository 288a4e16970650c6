import { test } from 'uvu';
import * as assert from 'uvu/assert';
import {
  LoRADisposedError, LoRAError, LoRANonFiniteError, LoRAShapeError, LoRATypeError, type LoRAWasm, init,
} from '../src/index.js';
import * as api from '../src/index.js';
import { ERROR_CLASSES } from '../src/errors.js';
import { BUILD, assertBitIdentical, lwUnderTest, randInt, randomF32, rng } from './helpers.js';

/** The table of src/errors.ts, written out independently: exported class name → [built-in parent, code]. */
const EXPECTED: Record<string, [ErrorConstructor | RangeErrorConstructor | TypeErrorConstructor, string]> = {
  LoRAError: [Error, 'LORA_ERROR'],
  LoRAShapeError: [RangeError, 'LORA_SHAPE'],
  LoRARangeError: [RangeError, 'LORA_RANGE'],
  LoRATypeError: [TypeError, 'LORA_TYPE'],
  LoRADisposedError: [TypeError, 'LORA_DISPOSED'],
  LoRANonFiniteError: [RangeError, 'LORA_NON_FINITE'],
  LoRAMemoryError: [RangeError, 'LORA_MEMORY'],
  LoRAStateError: [Error, 'LORA_STATE'],
  LoRAFormatError: [Error, 'LORA_FORMAT'],
  LoRAEnvironmentError: [Error, 'LORA_ENVIRONMENT'],
};

/** Every error class the package exports, found by walking the exports (so a new class cannot be skipped). */
const exportedErrorClasses = Object.entries(api).filter(
  ([, v]) => typeof v === 'function' && (v as { prototype?: unknown }).prototype instanceof Error,
) as [string, new (message: string) => Error][];

test('every exported error class is a LoRAError, the built-in class of its kind, named and coded', () => {
  assert.equal(exportedErrorClasses.map(([name]) => name).sort(), Object.keys(EXPECTED).sort(), 'exported error classes = the expected table');
  for (const [name, cls] of exportedErrorClasses) {
    const [builtin, code] = EXPECTED[name]!;
    const e = new cls('x');
    assert.ok(e instanceof LoRAError, `${name} instanceof LoRAError`);
    assert.ok(e instanceof builtin, `${name} instanceof ${builtin.name}`);
    assert.ok(e instanceof cls, `${name} instanceof itself`);
    assert.is(e.name, name);
    assert.is(e.message, 'x');
    assert.is((e as { code?: string }).code, code);
    for (const [other, otherCls] of exportedErrorClasses) {
      if (other !== name && other !== 'LoRAError') assert.not.ok(e instanceof otherCls, `${name} is not a ${other}`);
    }
  }
  assert.not.ok(new RangeError('x') instanceof LoRAError, 'plain errors are not LoRAErrors');
});

test('ERROR_CLASSES (the table as code) holds every exported error class once', () => {
  const inTable = Object.values(ERROR_CLASSES) as unknown[];
  assert.is(new Set(inTable).size, inTable.length, 'one kind per class');
  // by identity, not by Function.name: a bundler may rename a class (esbuild does in the browser suite)
  const exported = exportedErrorClasses.map(([, cls]) => cls as unknown);
  for (const cls of inTable) assert.ok(exported.includes(cls), `${(cls as { name: string }).name} in the table is exported`);
  assert.is(inTable.length, exported.length, 'as many kinds as exported classes');
  for (const [, cls] of exportedErrorClasses) assert.ok(inTable.includes(cls), `${cls.name} has a kind`);
});

type ErrorClass = abstract new (...args: never[]) => Error;
interface Corruption {
  what: string;
  cls: ErrorClass;
  /** Words the message must contain: the function, the argument, the shapes. */
  words: string[];
  /** Wrong only for the merge family (relative to W, or a merge option), so delta is not called. */
  mergeOnly?: boolean;
}

/**
 * Error-path fuzz: every operation × every way to get an argument wrong.
 * Each call must throw its typed error, never a wasm trap, and leave W (and
 * out) bit-for-bit unchanged and the heap without leaks.
 */
test('error-path fuzz: bad arguments give typed errors and never touch W', async () => {
  const lw = await lwUnderTest();
  const other = await init({ build: BUILD, maxMemoryBytes: 2 ** 24 }); // a second instance
  const r = rng(2026);
  let checked = 0;
  let aliasRounds = 0;
  for (let round = 0; round < 60; round++) {
    const dOut = randInt(r, 2, 24), dIn = randInt(r, 2, 24), k = randInt(r, 1, Math.min(dOut, dIn));
    const w = randomF32(r, dOut * dIn);
    const W = lw.matrix(dOut, dIn, w);
    const out = lw.matrix(dOut, dIn, w);
    const A = lw.matrix(dOut, k, randomF32(r, dOut * k));
    const B = lw.matrix(k, dIn, randomF32(r, k * dIn));
    const live = lw.memoryStats().liveBlocks;

    const bad: [string, unknown, Corruption][] = [
      ['A', lw.matrix(dOut + 1, k), { what: 'A rows != W rows', mergeOnly: true, cls: LoRAShapeError, words: [`A is [${dOut + 1}, ${k}]`, `[${dOut}, ${dIn}]`] }],
      ['B', lw.matrix(k, dIn + 1), { what: 'B cols != W cols', mergeOnly: true, cls: LoRAShapeError, words: [`B is [${k}, ${dIn + 1}]`] }],
      ['B', lw.matrix(k + 1, dIn), { what: 'rank mismatch', cls: LoRAShapeError, words: [`A is [${dOut}, ${k}]`, `B is [${k + 1}, ${dIn}]`] }],
      ['A', { rows: dOut, cols: k + 0.5, data: new Float32Array(dOut * k) }, { what: 'non-integer dim', cls: LoRAShapeError, words: ['A.cols', 'positive integer', `${k + 0.5}`] }],
      ['B', { rows: Number.NaN, cols: dIn, data: new Float32Array(k * dIn) }, { what: 'NaN dim', cls: LoRAShapeError, words: ['B.rows', 'NaN'] }],
      ['A', { rows: -dOut, cols: k, data: new Float32Array(dOut * k) }, { what: 'negative dim', cls: LoRAShapeError, words: ['A.rows', `-${dOut}`] }],
      ['A', { rows: dOut, cols: k, data: new Float64Array(dOut * k) }, { what: 'Float64Array', cls: LoRATypeError, words: ['A.data', 'Float64Array'] }],
      ['B', { rows: k, cols: dIn, data: new Float32Array(k * dIn + 1) }, { what: 'wrong length', cls: LoRAShapeError, words: ['B.data', `length ${k * dIn + 1}`, `[${k}, ${dIn}]`] }],
      ['A', (() => { const d = lw.matrix(dOut, k); d.dispose(); return d; })(), { what: 'disposed', cls: LoRADisposedError, words: ['A', 'disposed', `[${dOut}, ${k}]`] }],
      ['B', other.matrix(k, dIn), { what: 'other instance', cls: LoRATypeError, words: ['B', 'another lora-wasm instance'] }],
      ['A', null, { what: 'null', cls: LoRATypeError, words: ['A must be a Matrix', 'null'] }],
      ['B', [1, 2, 3], { what: 'array', cls: LoRATypeError, words: ['B must be a Matrix', 'Array(3)'] }],
      ['A', 42, { what: 'number', cls: LoRATypeError, words: ['A must be a Matrix', '42'] }],
      ['W', { rows: dOut, cols: dIn, data: Array.from(w) }, { what: 'number[] W', cls: LoRATypeError, words: ['W.data', 'Array'] }],
      ['W', (() => { const d = lw.matrix(dOut, dIn); d.dispose(); return d; })(), { what: 'disposed W', cls: LoRADisposedError, words: ['W', 'disposed'] }],
      ['opts', { scale: Number.NaN }, { what: 'NaN scale', cls: LoRANonFiniteError, words: ['options.scale', 'NaN'] }],
      ['opts', { scale: 1e39 }, { what: 'scale overflows f32', cls: LoRANonFiniteError, words: ['options.scale', 'f32'] }],
      ['opts', { scale: '2' }, { what: 'string scale', cls: LoRATypeError, words: ['options.scale', '"2"'] }],
      ['opts', { safe: 'yes' }, { what: 'string safe', mergeOnly: true, cls: LoRATypeError, words: ['options.safe'] }],
      ['opts', 3, { what: 'options not an object', cls: LoRATypeError, words: ['options must be an object'] }],
    ];
    // Aliasing: out may not share memory with A or B (B: [k, dIn] has out's shape when k == dOut).
    if (k === dOut) aliasRounds++;
    if (k === dOut) bad.push(['aliasB', null, { what: 'out aliases B', cls: LoRATypeError, words: ['shares memory with B'] }]);

    for (const [slot, value, c] of bad) {
      const calls: [string, () => unknown][] = [];
      const pick = (name: string, dflt: unknown) => (slot === name ? value : dflt);
      const opts = slot === 'opts' ? value : { scale: 0.5 };
      calls.push(['merge', () => lw.merge(pick('W', W) as typeof W, pick('A', A) as typeof A, pick('B', B) as typeof B, opts as object)]);
      calls.push(['unmerge', () => lw.unmerge(pick('W', W) as typeof W, pick('A', A) as typeof A, pick('B', B) as typeof B, opts as object)]);
      calls.push(['mergeInto', () => lw.mergeInto(out, pick('W', W) as typeof W, pick('A', A) as typeof A, pick('B', B) as typeof B, opts as object)]);
      if (slot !== 'W' && !c.mergeOnly) calls.push(['delta', () => lw.delta(pick('A', A) as typeof A, pick('B', B) as typeof B, opts as object)]);
      if (slot === 'aliasB') {
        calls.length = 0;
        calls.push(['mergeInto', () => lw.mergeInto(B as unknown as typeof W, W, A, B)]);
        calls.push(['merge', () => lw.merge(B as unknown as typeof W, A, B)]);
      }
      for (const [fn, call] of calls) {
        const words = [`${fn}:`, ...c.words.map((x) => (fn === 'mergeInto' && x.startsWith('W') ? x.replace(/^W/, 'W0') : x))];
        let threw = false;
        try {
          call();
        } catch (e) {
          threw = true;
          if (!(e instanceof c.cls) || !(e instanceof LoRAError)) {
            assert.unreachable(`${fn} with ${c.what}: expected ${c.cls.name}, got ${(e as Error).name}: ${(e as Error).message}`);
          }
          for (const word of words) {
            if (!(e as Error).message.includes(word)) {
              assert.unreachable(`${fn} with ${c.what}: message "${(e as Error).message}" lacks "${word}"`);
            }
          }
        }
        if (!threw) assert.unreachable(`${fn} with ${c.what} did not throw`);
        assertBitIdentical(W.data, w, `${fn} with ${c.what}: W untouched`);
        assertBitIdentical(out.data, w, `${fn} with ${c.what}: out untouched`);
        checked++;
      }
    }
    assert.is(lw.memoryStats().liveBlocks, live + 3, 'no leaked scratch (only the 3 wrong-shape matrices are live)');
    for (const [, value] of bad) if (value && typeof (value as { dispose?: () => void }).dispose === 'function') (value as { dispose(): void }).dispose();
    for (const m of [W, out, A, B]) m.dispose();
  }
  assert.ok(checked > 3000, `ran ${checked} bad calls`);
  assert.ok(aliasRounds > 0, 'the aliasing corruption was exercised');
});

test('mergeInto accepts out === W0, and rejects out partly overlapping W0', async () => {
  const lw = await lwUnderTest();
  const w = randomF32(rng(1), 8 * 8);
  using W = lw.matrix(8, 8, w);
  using A = lw.matrix(8, 2, randomF32(rng(2), 16));
  using B = lw.matrix(2, 8, randomF32(rng(3), 16));
  using ref = lw.matrix(8, 8, w);
  lw.merge(ref, A, B);
  lw.mergeInto(W, W, A, B);
  assertBitIdentical(W.data, ref.data, 'mergeInto(W, W) == merge(W)');
  const shared = new Float32Array(80);
  const out = { rows: 8, cols: 8, data: shared.subarray(0, 64) };
  const w0 = { rows: 8, cols: 8, data: shared.subarray(8, 72) };
  try {
    lw.mergeInto(out, w0, A, B);
    assert.unreachable('partial overlap accepted');
  } catch (e) {
    assert.instance(e, LoRATypeError);
    assert.match((e as Error).message, /mergeInto: out \[8, 8\] partly overlaps W0 \[8, 8\]/);
  }
  assert.ok(shared.every((v) => v === 0), 'nothing written');
});

test('plain outputs aliasing A through the same ArrayBuffer are rejected', async () => {
  const lw = await lwUnderTest();
  const buf = new Float32Array(4 * 4);
  const W = { rows: 4, cols: 4, data: buf };
  const A = { rows: 4, cols: 4, data: buf.subarray(0, 16) };
  using B = lw.matrix(4, 4);
  try {
    lw.merge(W, A, B);
    assert.unreachable('aliasing accepted');
  } catch (e) {
    assert.instance(e, LoRATypeError);
    assert.match((e as Error).message, /merge: W \[4, 4\] shares memory with A \[4, 4\]/);
  }
});

test('a view that was detached by memory growth is reported as such', async () => {
  const lw: LoRAWasm = await init({ build: BUILD, threads: 1 }); // views detach only on non-shared memory
  using m = lw.matrix(4, 4);
  const stale = m.data;
  using _grow = lw.matrix(2048, Math.ceil(lw.memoryStats().memoryBytes / 2048)); // grows memory, detaching `stale`
  using A = lw.matrix(4, 1);
  using B = lw.matrix(1, 4);
  try {
    lw.merge({ rows: 4, cols: 4, data: stale }, A, B);
    assert.unreachable('detached view accepted');
  } catch (e) {
    assert.instance(e, LoRAShapeError);
    assert.match((e as Error).message, /detached view/);
  }
});

test.run();
