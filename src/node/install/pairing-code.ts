// What people type for a pairing: the code, 8 characters of an unambiguous alphabet, shown as
// ABCD-EFGH, typed in any case with or without the dash; the replication addresses, which must name
// a node, not "any address"; and the named error every pairing failure is. Separate from the
// exchange so the CLI can check what was typed without loading the cryptography.
import { pairingCodeAlphabet, pairingCodeLength } from "../../constants.ts";
import type { RefusalCode } from "./pairing-wire.ts";

export type PairingFailureCode = "invalid-code" | "wrong-code" | RefusalCode | "refused" | "protocol" | "closed" | "timeout";

export class PairingError extends Error {
  override name = "PairingError";
  constructor(
    readonly code: PairingFailureCode,
    message: string,
  ) {
    super(message);
  }
}

/** The code as typed (any case, spaces or dashes) → its canonical form, or a PairingError. */
export function normalizePairingCode(text: string): string {
  const code = text.toUpperCase().replace(/[\s-]/g, "");
  const wrong = [...code].filter((char) => !pairingCodeAlphabet.includes(char));
  if (wrong.length > 0) throw new PairingError("invalid-code", `a pairing code has no ${[...new Set(wrong)].join(" ")}: it is ${pairingCodeLength} of ${pairingCodeAlphabet}`);
  if (code.length !== pairingCodeLength) throw new PairingError("invalid-code", `a pairing code has ${pairingCodeLength} characters, this one ${code.length}`);
  return code;
}

/** ABCD-EFGH: easier to read out and type. */
export function formatPairingCode(code: string): string {
  const half = Math.ceil(code.length / 2);
  return `${code.slice(0, half)}-${code.slice(half)}`;
}

/**
 * 0.0.0.0 or :: — "every address of this machine": a node can listen there, but its peer cannot
 * dial it, and each node's replication address is the one its peer dials.
 */
export function isWildcardHost(hostname: string): boolean {
  return /^(0\.0\.0\.0|\[?::0*\]?|\[?0*:0*:0*:0*:0*:0*:0*:0*\]?)$/.test(hostname);
}
