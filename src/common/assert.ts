// Assertions for bugs (CONVENTIONS.md §4). They stay on in production: a broken invariant in a
// storage daemon must stop it, never let it keep serving data. Operating errors (EIO, bad request,
// peer gone) are values or TandemError subclasses instead, see errors.ts.

export class AssertionError extends Error {
  override name = "AssertionError";
}

/**
 * `why` may be a function when the message quotes values: on paths run for every request, building
 * the text each time (number conversions, concatenation) costs more than the check, so it is built
 * only when the assertion fails.
 */
export function assert(condition: unknown, why: string | (() => string)): asserts condition {
  if (!condition) throw new AssertionError(`assertion failed: ${typeof why === "function" ? why() : why}`);
}

/** For exhaustive switches over discriminated unions: the compiler proves this is unreachable. */
export function unreachable(value: never, why = "unexpected variant"): never {
  throw new AssertionError(`unreachable: ${why}: ${JSON.stringify(value)}`);
}
