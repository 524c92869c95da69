// Polling with a deadline, for tests that wait for observable state instead of sleeping. Derive the
// deadline from the configured timeouts; a poll returns as soon as the state shows what it waits for,
// so no sleep ever stands for a synchronisation or for proof that something did not happen.

/** Resolve with `check()`'s first value that is not undefined or false; fail after `timeoutMs`. */
export async function until<T>(what: string, check: () => T | undefined | false, timeoutMs = 5000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = check();
    if (value !== undefined && value !== false) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await Bun.sleep(1);
  }
}

/**
 * The same for an asynchronous check (a CLI call, a control request), every `intervalMs`; a check
 * that throws counts as not yet, and its last error is in the timeout's message.
 */
export async function eventually<T>(what: string, check: () => Promise<T | undefined | false>, timeoutMs: number, intervalMs = 100): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const value = await check();
      if (value !== undefined && value !== false) return value;
    } catch (error) {
      last = error;
    }
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${last ? ` (last error: ${(last as Error).message})` : ""}`);
    await Bun.sleep(intervalMs);
  }
}
