/**
 * The real-adapter fixtures of ../shared/fixtures/ (CI lays shared/ beside the clone). Node reads them
 * from disk; other environments get undefined and the tests that need them return early. When
 * LORA_REQUIRE_FIXTURES is set (CI), a missing fixture is an error, so no test can pass by skipping.
 */
export const FIXTURE_ADAPTER = 'peft-distilbert-imdb/adapter_model.safetensors';
export const FIXTURE_CONFIG = 'peft-distilbert-imdb/adapter_config.json';

export async function readFixture(rel: string): Promise<Uint8Array | undefined> {
  const proc = (globalThis as { process?: { versions?: { node?: string }; env: Record<string, string | undefined> } }).process;
  if (!proc?.versions?.node) return undefined;
  const fs = await import('node:fs');
  const candidates = [new URL(`../../shared/fixtures/${rel}`, import.meta.url), new URL(`../../../shared/fixtures/${rel}`, import.meta.url)];
  for (const url of candidates) if (fs.existsSync(url)) return new Uint8Array(fs.readFileSync(url));
  if (proc.env.LORA_REQUIRE_FIXTURES || proc.env.CI) throw new Error(`fixture ${rel} not found beside the project (../shared/fixtures/)`);
  return undefined;
}

/** A committed file under test/fixtures/ (Node only; undefined in a browser). */
export async function readLocalFixture(rel: string): Promise<Uint8Array | undefined> {
  const proc = (globalThis as { process?: { versions?: { node?: string } } }).process;
  if (!proc?.versions?.node) return undefined;
  const fs = await import('node:fs');
  return new Uint8Array(fs.readFileSync(new URL(`./fixtures/${rel}`, import.meta.url)));
}
