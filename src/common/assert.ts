// Assertions for bugs (CONVENTIONS.md §4). They stay on in production: a broken invariant in a
// storage daemon must stop it, never let it keep serving data. Operating errors (EIO, bad request,
// peer gone) are values or TandemError subclasses instead, see errors.ts.

export class AssertionError extends Error {
  override name = "AssertionError";
}

export function assert(condition: unknown, why: string): asserts condition {
  if (!condition) throw new AssertionError(`assertion failed: ${why}`);
}

/** For exhaustive switches over discriminated unions: the compiler proves this is unreachable. */
export function unreachable(value: never, why = "unexpected variant"): never {
  throw new AssertionError(`unreachable: ${why}: ${JSON.stringify(value)}`);
}
