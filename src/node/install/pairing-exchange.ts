// The pairing exchange of `tandem install` as a pure core (CONVENTIONS.md §1): events in (a
// connection opened, a message arrived, a connection closed, time passed), actions out (send, close,
// paired, failed). The driver (pairing-driver.ts) owns the sockets and the clock; randomness comes in
// through `random`. docs/security.md ("Pairing") has the protocol and why each piece is there.
//
// One node shows a short one-time code and listens (the responder); the other dials it and types
// the code (the initiator). The code is not the secret: it is CPace's password (cpace.ts). Over one
// connection:
//
//   responder → initiator   hello    {nonce_R}
//   initiator → responder   share    {nonce_I, Y_I, offer_I}                 sid = nonce_R | nonce_I
//   responder → initiator   reply    {Y_R, offer_R, tag_R}                   (counts one attempt)
//   initiator → responder   confirm  {tag_I, verdict_I, tag(verdict_I)}
//   responder → initiator   done     {verdict_R, tag(verdict_R)}
//
// Both derive ISK from the code, sid, the shared point and both messages (offers included), then
// the pairing secret and the cluster id from ISK (HKDF-SHA-512). A wrong code on either side fails
// the other's confirmation tag; nothing derived from the exchange is ever written unless both tags
// and both verdicts check. The offers say who each node is (name, replication address, which end of
// the link it wants, its witness's id, its clock) and are authenticated by the tags; each side judges
// them with the same pure function (`judgePairing`), so a bad pair (same names, both dialing,
// different witness disks, clocks wildly apart) is refused by both before anything is written.
//
// The responder keeps the code's budget: it expires `lifetimeMs` after it was shown, is used up by
// the first exchange that confirms (one use), and allows `attemptsMax` exchanges that reach the
// reply without confirming, because each such exchange let the other end test one guess of the code.
import { hkdfSync, createHmac } from "node:crypto";
import { pairingAttemptsMax, pairingCodeLifetimeMs, preflightClockSkewMsMax } from "../../constants.ts";
import { calculateGenerator, concat, confirmationKey, confirmationTag, cpaceScalarBytes, cpaceShare, intermediateSessionKey, tagsEqual, transcriptIr, x25519 } from "./cpace.ts";
import { isWildcardHost, normalizePairingCode, type PairingFailureCode } from "./pairing-code.ts";
import { type PairingMessage, pairingProtocol, pairingProtocolVersion, type RefusalCode } from "./pairing-wire.ts";

export { formatPairingCode, normalizePairingCode, PairingError, type PairingFailureCode } from "./pairing-code.ts";

const encoder = new TextEncoder();
/** CPace's channel identifier: this protocol and its version. */
const channelIdentifier = encoder.encode(`${pairingProtocol}-v${pairingProtocolVersion}`);
const label = {
  secret: encoder.encode("tandem-pairing-v1 link secret"),
  clusterId: encoder.encode("tandem-pairing-v1 cluster id"),
  verdictKey: encoder.encode("tandem-pairing-v1 verdict key"),
  initiatorVerdict: encoder.encode("tandem-pairing-v1 initiator verdict "),
  responderVerdict: encoder.encode("tandem-pairing-v1 responder verdict "),
};
export const pairingSecretBytes = 32;
export const pairingClusterIdBytes = 16;
const nonceBytes = 16;

export type LinkEnd = "dial" | "accept";

/** What a node says about itself in the exchange (authenticated by the key confirmation). */
export interface PairingOffer {
  name: string;
  /** Its replication listener, HOST:PORT. */
  listen: string;
  /** The end of the link it was told to take; null lets the pair decide (the initiator dials). */
  connect: LinkEnd | null;
  /** Its witness's /dev/disk/by-id name; null when it has none. */
  witnessId: string | null;
  witnessPath: string | null;
  /** Its wall clock when it sent the offer (ms since the epoch). */
  timeMs: number;
  /** Round trip to the peer's port as the initiator measured it (ms); null on the responder. */
  linkRttMs: number | null;
  version: string;
}

export type OfferBase = Omit<PairingOffer, "timeMs">;

export type Verdict = { ok: true; clockOffsetMs: number | null } | { ok: false; reason: string };

export interface PairingResult {
  secret: Uint8Array;
  clusterId: Uint8Array;
  local: { name: string; listen: string; connect: LinkEnd };
  peer: { name: string; listen: string; connect: LinkEnd; offer: PairingOffer };
  /** This node's clock minus the peer's (ms), as the initiator measured it over the exchange. */
  clockOffsetMs: number | null;
}

// ---- judging the two offers (both sides run this on the same authenticated data)

const nodeNamePattern = /^[a-z0-9][a-z0-9_-]{0,30}$/;
const hostPortPattern = /^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):(\d{1,5})$/;

/** An offer from the wire, checked field by field; a string saying what is wrong otherwise. */
export function parseOffer(text: string): PairingOffer | string {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch {
    return "the offer is not JSON";
  }
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) return "the offer is not an object";
  const offer = raw as Record<string, unknown>;
  const nullableString = (value: unknown, max: number) => value === null || (typeof value === "string" && value.length > 0 && value.length <= max);
  const checks: [string, boolean][] = [
    ["name", typeof offer.name === "string" && nodeNamePattern.test(offer.name)],
    ["listen", typeof offer.listen === "string" && hostPortPattern.test(offer.listen) && Number(hostPortPattern.exec(offer.listen)![2]) <= 65535],
    ["connect", offer.connect === null || offer.connect === "dial" || offer.connect === "accept"],
    ["witnessId", nullableString(offer.witnessId, 255)],
    ["witnessPath", nullableString(offer.witnessPath, 4096)],
    ["timeMs", typeof offer.timeMs === "number" && Number.isFinite(offer.timeMs)],
    ["linkRttMs", offer.linkRttMs === null || (typeof offer.linkRttMs === "number" && Number.isFinite(offer.linkRttMs) && offer.linkRttMs >= 0)],
    ["version", typeof offer.version === "string" && offer.version.length > 0 && offer.version.length <= 64],
  ];
  for (const [field, ok] of checks) if (!ok) return `the offer's ${field} is missing or malformed`;
  const known = new Set(checks.map(([field]) => field));
  for (const key of Object.keys(offer)) if (!known.has(key)) return `the offer has an unknown field ${key}`;
  return offer as unknown as PairingOffer;
}

const otherEnd = (end: LinkEnd): LinkEnd => (end === "dial" ? "accept" : "dial");

/**
 * Whether these two nodes may pair, and which end of the link the initiator takes. `clockOffsetMs`
 * is the initiator's clock minus the responder's, as the initiator measured it.
 */
export function judgePairing(initiator: PairingOffer, responder: PairingOffer, clockOffsetMs: number | null): { ok: true; initiatorConnect: LinkEnd } | { ok: false; reason: string } {
  if (initiator.name === responder.name) return { ok: false, reason: `both nodes are named ${initiator.name}: give each its own name (--name)` };
  for (const offer of [initiator, responder]) {
    const host = hostPortPattern.exec(offer.listen)![1]!;
    if (isWildcardHost(host)) return { ok: false, reason: `${offer.name}'s replication address ${offer.listen} is every address of that machine: its peer cannot dial it; give its address on the replication link (--listen)` };
  }
  let initiatorConnect: LinkEnd;
  if (initiator.connect && responder.connect) {
    if (initiator.connect === responder.connect) return { ok: false, reason: `both nodes were told to ${initiator.connect} (--connect): exactly one of them dials` };
    initiatorConnect = initiator.connect;
  } else if (initiator.connect) initiatorConnect = initiator.connect;
  else if (responder.connect) initiatorConnect = otherEnd(responder.connect);
  else initiatorConnect = "dial";
  if (initiator.witnessId && responder.witnessId && initiator.witnessId !== responder.witnessId) {
    return { ok: false, reason: `the nodes name different witness disks: ${initiator.name} sees ${initiator.witnessId}, ${responder.name} sees ${responder.witnessId}` };
  }
  if (clockOffsetMs !== null && Math.abs(clockOffsetMs) > preflightClockSkewMsMax) {
    return { ok: false, reason: `the clocks of ${initiator.name} and ${responder.name} are ${(Math.abs(clockOffsetMs) / 1000).toFixed(1)} s apart (at most ${preflightClockSkewMsMax / 1000} s): synchronise them (NTP)` };
  }
  return { ok: true, initiatorConnect };
}

// ---- keys

interface SessionKeys {
  macKey: Uint8Array;
  verdictKey: Uint8Array;
  secret: Uint8Array;
  clusterId: Uint8Array;
}

function hkdf(isk: Uint8Array, sid: Uint8Array, info: Uint8Array, bytes: number): Uint8Array {
  return new Uint8Array(hkdfSync("sha512", isk, sid, info, bytes));
}

function sessionKeys(sid: Uint8Array, isk: Uint8Array): SessionKeys {
  return {
    macKey: confirmationKey(sid, isk),
    verdictKey: hkdf(isk, sid, label.verdictKey, 32),
    secret: hkdf(isk, sid, label.secret, pairingSecretBytes),
    clusterId: hkdf(isk, sid, label.clusterId, pairingClusterIdBytes),
  };
}

function verdictTag(key: Uint8Array, role: "initiator" | "responder", verdictText: string): Uint8Array {
  return new Uint8Array(
    createHmac("sha512", key)
      .update(role === "initiator" ? label.initiatorVerdict : label.responderVerdict)
      .update(verdictText)
      .digest(),
  );
}

function parseVerdict(text: string): Verdict | undefined {
  try {
    const raw = JSON.parse(text) as Record<string, unknown>;
    if (raw.ok === true && (raw.clockOffsetMs === null || (typeof raw.clockOffsetMs === "number" && Number.isFinite(raw.clockOffsetMs)))) return { ok: true, clockOffsetMs: raw.clockOffsetMs as number | null };
    if (raw.ok === false && typeof raw.reason === "string") return { ok: false, reason: raw.reason.slice(0, 500) };
  } catch {
    // Falls through: not a verdict.
  }
  return undefined;
}

const toHex = (bytes: Uint8Array) => Buffer.from(bytes).toString("hex");
const fromHex = (text: string) => Uint8Array.from(Buffer.from(text, "hex"));

/** Both nodes' view of the result, from the initiator's offer, the responder's and the agreed ends. */
function result(keys: SessionKeys, local: PairingOffer, peer: PairingOffer, localConnect: LinkEnd, clockOffsetMs: number | null): PairingResult {
  return {
    secret: keys.secret,
    clusterId: keys.clusterId,
    local: { name: local.name, listen: local.listen, connect: localConnect },
    peer: { name: peer.name, listen: peer.listen, connect: otherEnd(localConnect), offer: peer },
    clockOffsetMs,
  };
}

// ---- the responder: shows the code, listens, keeps the code's budget

export type ResponderAction =
  | { kind: "send"; session: number; message: PairingMessage }
  | { kind: "close"; session: number; reason: string }
  /** An exchange that reached the reply ended without confirming: one guess of the code was spent. */
  | { kind: "attempt-failed"; session: number; reason: string; attemptsLeft: number }
  /** `session`: the connection the pairing was made on. */
  | { kind: "paired"; session: number; result: PairingResult }
  | { kind: "failed"; code: PairingFailureCode; reason: string };

type ResponderSession =
  | { state: "greeted"; nonce: Uint8Array; openedMs: number }
  | { state: "replied"; openedMs: number; keys: SessionKeys; expectedTag: Uint8Array; offerI: PairingOffer; offerR: PairingOffer };

export interface ResponderOptions {
  /** The code, canonical (normalizePairingCode). */
  code: string;
  offer: OfferBase;
  /** When the code was shown. */
  startedMs: number;
  lifetimeMs?: number;
  attemptsMax?: number;
  random: (bytes: number) => Uint8Array;
}

export class PairingResponder {
  private readonly prs: Uint8Array;
  private readonly sessions = new Map<number, ResponderSession>();
  private attemptsLeftCount: number;
  private outcomeValue: { kind: "paired"; session: number; result: PairingResult } | { kind: "failed"; code: PairingFailureCode; reason: string } | undefined;
  readonly expiresAtMs: number;

  constructor(private readonly options: ResponderOptions) {
    this.prs = encoder.encode(normalizePairingCode(options.code));
    this.attemptsLeftCount = options.attemptsMax ?? pairingAttemptsMax;
    this.expiresAtMs = options.startedMs + (options.lifetimeMs ?? pairingCodeLifetimeMs);
  }

  get attemptsLeft(): number {
    return this.attemptsLeftCount;
  }

  /** Set once: paired, or failed (expired, attempts exhausted, refused). */
  get outcome() {
    return this.outcomeValue;
  }

  connected(session: number, nowMs: number): ResponderAction[] {
    const refusal = this.refusal(nowMs);
    if (refusal) return [{ kind: "send", session, message: { type: "refused", code: refusal.code, message: refusal.message } }, { kind: "close", session, reason: refusal.code }, ...this.expire(nowMs)];
    const nonce = this.options.random(nonceBytes);
    this.sessions.set(session, { state: "greeted", nonce, openedMs: nowMs });
    return [{ kind: "send", session, message: { type: "hello", protocol: pairingProtocol, version: pairingProtocolVersion, nonce: toHex(nonce) } }];
  }

  received(session: number, message: PairingMessage, nowMs: number): ResponderAction[] {
    const current = this.sessions.get(session);
    if (!current) return [{ kind: "close", session, reason: "no such exchange" }];
    const refusal = this.refusal(nowMs);
    if (refusal && !(current.state === "replied" && message.type === "confirm" && refusal.code === "attempts-exhausted")) {
      this.sessions.delete(session);
      return [{ kind: "send", session, message: { type: "refused", code: refusal.code, message: refusal.message } }, { kind: "close", session, reason: refusal.code }, ...this.expire(nowMs)];
    }
    if (current.state === "greeted" && message.type === "share") return this.onShare(session, current, message, nowMs);
    if (current.state === "replied" && message.type === "confirm") return this.onConfirm(session, current, message);
    return this.drop(session, `unexpected ${message.type} message`);
  }

  /** The connection ended (closed, timed out, or sent something malformed). */
  disconnected(session: number, reason: string): ResponderAction[] {
    if (!this.sessions.has(session)) return [];
    return this.drop(session, reason).filter((action) => action.kind !== "close");
  }

  tick(nowMs: number): ResponderAction[] {
    return this.expire(nowMs);
  }

  private refusal(nowMs: number): { code: RefusalCode; message: string } | undefined {
    if (this.outcomeValue?.kind === "paired") return { code: "code-used", message: "this code has been used" };
    if (this.outcomeValue?.kind === "failed") {
      const code = this.outcomeValue.code === "expired" || this.outcomeValue.code === "attempts-exhausted" ? this.outcomeValue.code : "code-used";
      return { code, message: this.outcomeValue.reason };
    }
    if (nowMs >= this.expiresAtMs) return { code: "expired", message: "the code has expired: show a new one on the other node" };
    if (this.attemptsLeftCount === 0) return { code: "attempts-exhausted", message: "the code has had too many wrong attempts: show a new one on the other node" };
    return undefined;
  }

  private expire(nowMs: number): ResponderAction[] {
    if (this.outcomeValue || nowMs < this.expiresAtMs) return [];
    return this.finish({ kind: "failed", code: "expired", reason: `the code expired after ${Math.round((this.options.lifetimeMs ?? pairingCodeLifetimeMs) / 60_000)} min without a successful exchange` });
  }

  private finish(outcome: NonNullable<PairingResponder["outcomeValue"]>, keep?: number): ResponderAction[] {
    this.outcomeValue = outcome;
    const actions: ResponderAction[] = [];
    for (const session of this.sessions.keys()) if (session !== keep) actions.push({ kind: "close", session, reason: outcome.kind === "paired" ? "code-used" : outcome.code });
    this.sessions.clear();
    actions.push(outcome);
    return actions;
  }

  /** End one exchange; one that had a reply spent an attempt, and the last one spent ends the code. */
  private drop(session: number, reason: string): ResponderAction[] {
    const current = this.sessions.get(session);
    this.sessions.delete(session);
    const actions: ResponderAction[] = [{ kind: "close", session, reason }];
    if (current?.state === "replied") {
      actions.push({ kind: "attempt-failed", session, reason, attemptsLeft: this.attemptsLeftCount });
      const pending = [...this.sessions.values()].some((other) => other.state === "replied");
      if (this.attemptsLeftCount === 0 && !pending && !this.outcomeValue) {
        actions.push(...this.finish({ kind: "failed", code: "attempts-exhausted", reason: `${this.options.attemptsMax ?? pairingAttemptsMax} exchanges failed to confirm the code (a wrong code typed, or someone guessing): show a new code` }));
      }
    }
    return actions;
  }

  private onShare(session: number, current: Extract<ResponderSession, { state: "greeted" }>, message: Extract<PairingMessage, { type: "share" }>, nowMs: number): ResponderAction[] {
    const offerI = parseOffer(message.offer);
    if (typeof offerI === "string") return this.drop(session, offerI);
    const sid = concat(current.nonce, fromHex(message.nonce));
    const generator = calculateGenerator(this.prs, channelIdentifier, sid);
    const scalar = this.options.random(cpaceScalarBytes);
    const shareR = cpaceShare(scalar, generator);
    const shareI = fromHex(message.share);
    const shared = x25519(scalar, shareI);
    if (!shared) return this.drop(session, "the initiator's share is a low-order point");
    const offerR: PairingOffer = { ...this.options.offer, timeMs: nowMs };
    const offerRText = JSON.stringify(offerR);
    const offerIBytes = encoder.encode(message.offer);
    const offerRBytes = encoder.encode(offerRText);
    const keys = sessionKeys(sid, intermediateSessionKey(sid, shared, transcriptIr(shareI, offerIBytes, shareR, offerRBytes)));
    this.attemptsLeftCount -= 1;
    this.sessions.set(session, { state: "replied", openedMs: current.openedMs, keys, expectedTag: confirmationTag(keys.macKey, shareI, offerIBytes), offerI, offerR });
    return [{ kind: "send", session, message: { type: "reply", share: toHex(shareR), offer: offerRText, tag: toHex(confirmationTag(keys.macKey, shareR, offerRBytes)) } }];
  }

  private onConfirm(session: number, current: Extract<ResponderSession, { state: "replied" }>, message: Extract<PairingMessage, { type: "confirm" }>): ResponderAction[] {
    if (!tagsEqual(fromHex(message.tag), current.expectedTag)) return this.drop(session, "the confirmation does not match: the other node typed another code");
    if (!tagsEqual(fromHex(message.verdictTag), verdictTag(current.keys.verdictKey, "initiator", message.verdict))) return this.drop(session, "the initiator's verdict is not authentic");
    const verdictI = parseVerdict(message.verdict);
    if (!verdictI) return this.drop(session, "the initiator's verdict is malformed");
    // The right code was shown: whatever follows, this code has done its one job.
    this.sessions.delete(session);
    if (!verdictI.ok) return [{ kind: "close", session, reason: "refused by the initiator" }, ...this.finish({ kind: "failed", code: "refused", reason: `${current.offerI.name} refused to pair: ${verdictI.reason}` })];
    const judged = judgePairing(current.offerI, current.offerR, verdictI.clockOffsetMs);
    const verdictR: Verdict = judged.ok ? { ok: true, clockOffsetMs: verdictI.clockOffsetMs } : { ok: false, reason: judged.reason };
    const verdictText = JSON.stringify(verdictR);
    const done: ResponderAction = { kind: "send", session, message: { type: "done", verdict: verdictText, verdictTag: toHex(verdictTag(current.keys.verdictKey, "responder", verdictText)) } };
    if (!judged.ok) return [done, { kind: "close", session, reason: "refused" }, ...this.finish({ kind: "failed", code: "refused", reason: judged.reason })];
    const offset = verdictI.clockOffsetMs === null ? null : -verdictI.clockOffsetMs;
    return [done, { kind: "close", session, reason: "paired" }, ...this.finish({ kind: "paired", session, result: result(current.keys, current.offerR, current.offerI, otherEnd(judged.initiatorConnect), offset) }, session)];
  }
}

// ---- the initiator: dials the responder and types the code

export type InitiatorAction = { kind: "send"; message: PairingMessage } | { kind: "paired"; result: PairingResult } | { kind: "failed"; code: PairingFailureCode; reason: string };

type InitiatorPhase =
  | { state: "awaiting-hello" }
  | { state: "awaiting-reply"; sid: Uint8Array; scalar: Uint8Array; share: Uint8Array; offerText: string; offer: PairingOffer; sentMs: number }
  | { state: "awaiting-done"; keys: SessionKeys; offerI: PairingOffer; offerR: PairingOffer; connect: LinkEnd; clockOffsetMs: number | null }
  | { state: "over" };

export interface InitiatorOptions {
  code: string;
  offer: OfferBase;
  random: (bytes: number) => Uint8Array;
}

export class PairingInitiator {
  private readonly prs: Uint8Array;
  private phase: InitiatorPhase = { state: "awaiting-hello" };

  constructor(private readonly options: InitiatorOptions) {
    this.prs = encoder.encode(normalizePairingCode(options.code));
  }

  get over(): boolean {
    return this.phase.state === "over";
  }

  received(message: PairingMessage, nowMs: number): InitiatorAction[] {
    const phase = this.phase;
    if (phase.state === "over") return [];
    if (message.type === "refused") return this.fail(message.code, `the other node refused the code: ${message.message}`);
    if (phase.state === "awaiting-hello" && message.type === "hello") return this.onHello(message, nowMs);
    if (phase.state === "awaiting-reply" && message.type === "reply") return this.onReply(phase, message, nowMs);
    if (phase.state === "awaiting-done" && message.type === "done") return this.onDone(phase, message);
    return this.fail("protocol", `unexpected ${message.type} message from the other node`);
  }

  /** The connection ended before the exchange did. */
  disconnected(reason: string): InitiatorAction[] {
    const phase = this.phase;
    if (phase.state === "over") return [];
    if (phase.state === "awaiting-done") return this.fail("closed", `the other node closed the connection before confirming (${reason}); it may have refused: see its screen`);
    return this.fail("closed", `the other node closed the connection (${reason})`);
  }

  private fail(code: PairingFailureCode, reason: string): InitiatorAction[] {
    this.phase = { state: "over" };
    return [{ kind: "failed", code, reason }];
  }

  private onHello(message: Extract<PairingMessage, { type: "hello" }>, nowMs: number): InitiatorAction[] {
    if (message.version !== pairingProtocolVersion) return this.fail("protocol", `the other node speaks pairing protocol ${message.version}, this one ${pairingProtocolVersion}: install the same Tandem version on both`);
    const nonce = this.options.random(nonceBytes);
    const sid = concat(fromHex(message.nonce), nonce);
    const scalar = this.options.random(cpaceScalarBytes);
    const share = cpaceShare(scalar, calculateGenerator(this.prs, channelIdentifier, sid));
    const offer: PairingOffer = { ...this.options.offer, timeMs: nowMs };
    const offerText = JSON.stringify(offer);
    this.phase = { state: "awaiting-reply", sid, scalar, share, offerText, offer, sentMs: nowMs };
    return [{ kind: "send", message: { type: "share", nonce: toHex(nonce), share: toHex(share), offer: offerText } }];
  }

  private onReply(phase: Extract<InitiatorPhase, { state: "awaiting-reply" }>, message: Extract<PairingMessage, { type: "reply" }>, nowMs: number): InitiatorAction[] {
    const shareR = fromHex(message.share);
    if (tagsEqual(shareR, phase.share)) return this.fail("protocol", "the other node sent back our own share");
    const shared = x25519(phase.scalar, shareR);
    if (!shared) return this.fail("protocol", "the other node's share is a low-order point");
    const offerR = parseOffer(message.offer);
    if (typeof offerR === "string") return this.fail("protocol", `the other node's ${offerR.replace(/^the /, "")}`);
    const offerIBytes = encoder.encode(phase.offerText);
    const offerRBytes = encoder.encode(message.offer);
    const keys = sessionKeys(phase.sid, intermediateSessionKey(phase.sid, shared, transcriptIr(phase.share, offerIBytes, shareR, offerRBytes)));
    if (!tagsEqual(fromHex(message.tag), confirmationTag(keys.macKey, shareR, offerRBytes))) {
      return this.fail("wrong-code", "the code does not match the one the other node shows (or another machine answers at that address): check the code and try again");
    }
    // The responder's clock read halfway through our round trip, on the usual assumption of symmetric delays.
    const clockOffsetMs = Math.round((phase.sentMs + nowMs) / 2 - offerR.timeMs);
    const judged = judgePairing(phase.offer, offerR, clockOffsetMs);
    const verdict: Verdict = judged.ok ? { ok: true, clockOffsetMs } : { ok: false, reason: judged.reason };
    const verdictText = JSON.stringify(verdict);
    const confirm: InitiatorAction = { kind: "send", message: { type: "confirm", tag: toHex(confirmationTag(keys.macKey, phase.share, offerIBytes)), verdict: verdictText, verdictTag: toHex(verdictTag(keys.verdictKey, "initiator", verdictText)) } };
    if (!judged.ok) return [confirm, ...this.fail("refused", judged.reason)];
    this.phase = { state: "awaiting-done", keys, offerI: phase.offer, offerR, connect: judged.initiatorConnect, clockOffsetMs };
    return [confirm];
  }

  private onDone(phase: Extract<InitiatorPhase, { state: "awaiting-done" }>, message: Extract<PairingMessage, { type: "done" }>): InitiatorAction[] {
    if (!tagsEqual(fromHex(message.verdictTag), verdictTag(phase.keys.verdictKey, "responder", message.verdict))) return this.fail("protocol", "the other node's verdict is not authentic");
    const verdict = parseVerdict(message.verdict);
    if (!verdict) return this.fail("protocol", "the other node's verdict is malformed");
    if (!verdict.ok) return this.fail("refused", `${phase.offerR.name} refused to pair: ${verdict.reason}`);
    this.phase = { state: "over" };
    return [{ kind: "paired", result: result(phase.keys, phase.offerI, phase.offerR, phase.connect, phase.clockOffsetMs) }];
  }
}
