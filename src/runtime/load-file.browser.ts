/** Browser stand-in for load-file.ts: there is no file system to read from. */
import { LoRAEnvironmentError } from '../errors.js';

export async function readFileUrl(url: URL): Promise<Uint8Array> {
  throw new LoRAEnvironmentError(`cannot read ${url.href} in a browser: serve the .wasm over http(s), or pass its bytes`);
}

export async function pathToUrl(s: string): Promise<URL> {
  return new URL(s, globalThis.location?.href);
}
