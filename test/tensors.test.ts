// lw.loadTensors / lw.saveTensors: whole safetensors files to resident matrices and back. Names that
// are members of Object.prototype, zero-size tensors and integer-like names survive a round trip byte
// for byte; a named tensor the file lacks, a bad shape or a non-matrix is a typed error naming it.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { LoRAFormatError, LoRAShapeError, LoRATypeError } from '../src/index.js';
import { encodeSafetensors } from '../src/io/safetensors.js';
import { assertRejectsTyped, assertResolves, assertThrowsTyped, lwUnderTest, randomF32, rng } from './helpers.js';

const g = rng(5);
const f32 = (n: number) => randomF32(g, n);
const half = (n: number) => Uint16Array.from({ length: n }, () => Math.floor(g() * 0x7c00)); // finite f16/bf16 bit patterns

/** A file with tensors named after Object.prototype members, zero-size tensors, and integer-like names. */
const ROUND_TRIP = () =>
  encodeSafetensors([
    { name: '__proto__', dtype: 'F32', shape: [2, 3], data: f32(6) },
    { name: 'constructor', dtype: 'F16', shape: [4], data: half(4) },
    { name: 'toString', dtype: 'BF16', shape: [2, 2, 1, 1], data: half(4) },
    { name: 'hasOwnProperty', dtype: 'F32', shape: [], data: f32(1) },
    { name: '10', dtype: 'F32', shape: [3, 2, 2], data: f32(12) },
    { name: '2', dtype: 'F32', shape: [1], data: f32(1) },
    { name: 'empty.a', dtype: 'F32', shape: [0], data: new Float32Array(0) },
    { name: 'empty.b', dtype: 'F16', shape: [0, 4], data: new Uint16Array(0) },
    { name: 'valueOf', dtype: 'BF16', shape: [4, 0], data: new Uint16Array(0) },
  ], Object.fromEntries([['format', 'pt'], ['__proto__', 'p'], ['constructor', 'c']]));

test('a file with tensors named __proto__, constructor, toString, hasOwnProperty and zero-size tensors loads and saves back byte for byte', async () => {
  const lw = await lwUnderTest();
  const bytes = ROUND_TRIP();
  const set = await assertResolves(lw.loadTensors(bytes), 'loadTensors');
  try {
    for (const r of [set.tensors, set.shapes, set.metadata, set.empty]) assert.is(Object.getPrototypeOf(r), null, 'null-prototype records');
    assert.equal(Object.keys(set.tensors).sort(), ['10', '2', '__proto__', 'constructor', 'hasOwnProperty', 'toString']);
    // entries, not objects: uvu's equal reads .constructor and .hasOwnProperty of what it compares
    const shapeOf = (name: string) => { const m = set.tensors[name]!; return [m.rows, m.cols, m.dtype]; };
    assert.equal(['__proto__', 'constructor', 'toString'].map(shapeOf), [[2, 3, 'f32'], [1, 4, 'f16'], [2, 2, 'bf16']]);
    assert.equal(Object.entries(set.shapes).sort(), [['10', [3, 2, 2]], ['2', [1]], ['__proto__', [2, 3]], ['constructor', [4]], ['hasOwnProperty', []], ['toString', [2, 2, 1, 1]]]);
    assert.equal(JSON.parse(JSON.stringify(set.empty)), { 'empty.a': { dtype: 'f32', shape: [0] }, 'empty.b': { dtype: 'f16', shape: [0, 4] }, valueOf: { dtype: 'bf16', shape: [4, 0] } });
    assert.equal(Object.entries(set.metadata), [['format', 'pt'], ['__proto__', 'p'], ['constructor', 'c']]);
    assert.equal(set.skipped, []);
    const again = lw.saveTensors(set);
    assert.is(again.length, bytes.length);
    assert.ok(again.every((b, i) => b === bytes[i]), 'identical bytes');
  } finally {
    for (const m of Object.values(set.tensors)) m.dispose();
  }
});

test('zero-size tensors are listed in empty, never dropped; named ones too; an I64 one is skipped like any I64', async () => {
  const lw = await lwUnderTest();
  const bytes = encodeSafetensors([
    { name: 'w', dtype: 'F32', shape: [2, 2], data: f32(4) },
    { name: 'z', dtype: 'BF16', shape: [3, 0, 2], data: new Uint16Array(0) },
    { name: 'ids', dtype: 'I64', shape: [0], data: new Uint8Array(0) },
  ]);
  const set = await lw.loadTensors(bytes);
  assert.equal(Object.keys(set.tensors), ['w']);
  assert.equal(Object.keys(set.empty!), ['z']);
  assert.equal(set.skipped, ['ids (I64)']);
  set.tensors.w!.dispose();
  const named = await lw.loadTensors(bytes, { names: ['z'] });
  assert.equal([Object.keys(named.tensors), { ...named.empty }], [[], { z: { dtype: 'bf16', shape: [3, 0, 2] } }]);
  await assertRejectsTyped(lw.loadTensors(bytes, { names: ['ids'] }), LoRAFormatError, ['"ids" is I64']);
});

test('naming a tensor the file does not have is a LoRAFormatError naming it (not a silent skip)', async () => {
  const lw = await lwUnderTest();
  const bytes = encodeSafetensors([{ name: 'w', dtype: 'F32', shape: [1, 2], data: f32(2) }], { format: 'pt' });
  await assertRejectsTyped(lw.loadTensors(bytes, { names: ['w', 'constructor'] }), LoRAFormatError, ['(bytes)', 'there is no tensor "constructor"']);
  await assertRejectsTyped(lw.loadTensors(bytes, { names: 'w' as never }), LoRATypeError, ['loadTensors: options.names must be a list of tensor names']);
});

test('saveTensors reads only own entries of plain objects: a tensor named constructor takes its matrix shape, not Object', async () => {
  const lw = await lwUnderTest();
  const m = lw.matrix(2, 3, f32(6));
  const n = lw.matrix(1, 4, f32(4));
  try {
    const out = lw.saveTensors({ tensors: { constructor: m, toString: n }, shapes: { toString: [4] }, metadata: {} });
    const back = await lw.loadTensors(out);
    assert.equal(Object.entries(back.shapes), [['constructor', [2, 3]], ['toString', [4]]]);
    for (const x of Object.values(back.tensors)) x.dispose();
    assertThrowsTyped(() => lw.saveTensors({ tensors: { w: m }, shapes: { w: [5] }, metadata: {} }), LoRAShapeError, ['saveTensors: shapes["w"] is [5] but the matrix is [2, 3]']);
    assertThrowsTyped(() => lw.saveTensors({ tensors: { w: m }, shapes: {}, metadata: {}, empty: { w: { dtype: 'f32', shape: [0] } } }), LoRAFormatError, ['"w" twice']);
    assertThrowsTyped(() => lw.saveTensors({ tensors: {}, shapes: {}, metadata: {}, empty: { e: { dtype: 'f32', shape: [2] } } }), LoRAShapeError, ['empty["e"].shape must be a shape with a 0 in it, got [2]']);
    assertThrowsTyped(() => lw.saveTensors({ tensors: {}, shapes: {}, metadata: {}, empty: { e: { dtype: 'I64' as never, shape: [0] } } }), LoRATypeError, ['empty["e"] must be']);
    assertThrowsTyped(() => lw.saveTensors({ tensors: { w: new Float32Array(2) as never }, shapes: {}, metadata: {} }), LoRATypeError, ['tensors["w"] must be a Matrix, got Float32Array(2)']);
    assertThrowsTyped(() => lw.saveTensors({ tensors: {}, shapes: {}, metadata: 'pt' as never }), LoRATypeError, ['set.metadata must be an object']);
  } finally {
    m.dispose();
    n.dispose();
  }
});

test.run();
