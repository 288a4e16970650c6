/**
 * The shared-memory variant of a single-thread .wasm, derived by flipping one
 * byte.
 *
 * `asc --enable threads --sharedMemory` compiles the same code; the only
 * difference in the binary is the memory import's limits flag, 0x01 (has a
 * maximum) → 0x03 (has a maximum, shared). The inline bundles embed the two
 * single-thread builds and derive the threads builds with this, instead of
 * embedding four files. test/threads.test.ts checks that the result equals
 * asc's build/lora-*-threads.wasm byte for byte.
 *
 * Binary layout read here (WebAssembly spec, binary format):
 *   magic, version; sections: id (u8), size (LEB128 u32), contents.
 *   Import section (id 2): count, then per import: module name, field name
 *   (LEB128 length + UTF-8), kind (0x02 = memory), limits flag, min[, max].
 */
import { LoRAFormatError } from '../errors.js';

const IMPORT_SECTION = 2;
const MEMORY_KIND = 2;

function leb(bytes: Uint8Array, at: number): [value: number, next: number] {
  let value = 0;
  let shift = 0;
  for (;;) {
    const b = bytes[at++];
    if (b === undefined) throw new LoRAFormatError('sharedVariant: the .wasm ends inside a LEB128 number');
    value += (b & 0x7f) * 2 ** shift;
    shift += 7;
    if ((b & 0x80) === 0) return [value, at];
  }
}

/** A copy of `wasm` whose imported memory is shared; throws LoRAFormatError if it imports no memory with a maximum. */
export function sharedVariant(wasm: Uint8Array): Uint8Array {
  const out = wasm.slice();
  let at = 8;
  while (at < out.length) {
    const id = out[at]!;
    const [size, body] = leb(out, at + 1);
    if (id === IMPORT_SECTION) {
      let [count, p] = leb(out, body);
      while (count-- > 0) {
        let len: number;
        [len, p] = leb(out, p);
        p += len; // module name
        [len, p] = leb(out, p);
        p += len; // field name
        const kind = out[p++];
        if (kind === MEMORY_KIND) {
          if (out[p] !== 0x01) throw new LoRAFormatError(`sharedVariant: the memory import's limits flag is ${out[p]}, not 0x01 (max, not shared)`);
          out[p] = 0x03;
          return out;
        }
        // function (type index), table (reftype + limits) and global (type + mut) imports: not in our modules
        throw new LoRAFormatError(`sharedVariant: unexpected import kind ${kind} before the memory import`);
      }
    }
    at = body + size;
  }
  throw new LoRAFormatError('sharedVariant: the module imports no memory');
}
