// Polling with a deadline, for tests that wait for observable state instead of sleeping.

/** Resolve with `check()`'s first value that is not undefined or false; fail after `timeoutMs`. */
export async function until<T>(what: string, check: () => T | undefined | false, timeoutMs = 5000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = check();
    if (value !== undefined && value !== false) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await Bun.sleep(1);
  }
}
