// The pairing exchange's pure core (src/node/install/pairing-exchange.ts) and its wire codec, driven
// by scripted schedules without sockets or clocks: a responder (shows the code) and initiators (type
// a code) joined by an in-memory pipe that can record, replay, alter or sit in the middle. It proves:
// the right code pairs both nodes with the same secret and cluster id, complementary link ends and
// each other's addresses; a wrong code fails on both sides and costs the code one attempt; the code
// is burnt after pairingAttemptsMax failed exchanges, expires, and is good for one pairing only; a
// recorded exchange replayed gets nowhere; a man in the middle who does not know the code fails on
// both sides (and an altered offer fails the confirmation); bad pairs (same names, both dialing,
// different witness disks, clocks apart) are refused by both before anything is derived for use.
import { describe, expect, test } from "bun:test";
import { createHash } from "node:crypto";
import { pairingAttemptsMax, pairingCodeLifetimeMs, pairingMessageBytesMax } from "../../src/constants.ts";
import {
  formatPairingCode,
  type InitiatorAction,
  normalizePairingCode,
  type OfferBase,
  PairingError,
  PairingInitiator,
  PairingResponder,
  type PairingResult,
  type ResponderAction,
} from "../../src/node/install/pairing-exchange.ts";
import { decodePairingFrame, encodePairingMessage, NEED_MORE, PairingDecodeError, PairingFramer, type PairingMessage } from "../../src/node/install/pairing-wire.ts";

/** A deterministic random source (SHA-256 in counter mode over a seed). */
function seededRandom(seed: string): (bytes: number) => Uint8Array {
  let counter = 0;
  return (bytes) => {
    const out = new Uint8Array(bytes);
    for (let offset = 0; offset < bytes; offset += 32) out.set(createHash("sha256").update(`${seed}:${counter++}`).digest().subarray(0, Math.min(32, bytes - offset)), offset);
    return out;
  };
}

const code = "K7QM-3XPA";
const t0 = 1_800_000_000_000;
const offerA: OfferBase = { name: "a", listen: "10.99.0.1:7788", connect: null, witnessId: "wwn-0x5000c500a1b2c3d4", witnessPath: "/dev/disk/by-id/wwn-0x5000c500a1b2c3d4", linkRttMs: null, version: "0.1.0" };
const offerB: OfferBase = { ...offerA, name: "b", listen: "10.99.0.2:7788", linkRttMs: 0.2 };

function responder(options: Partial<ConstructorParameters<typeof PairingResponder>[0]> = {}) {
  return new PairingResponder({ code, offer: offerA, startedMs: t0, random: seededRandom("responder"), ...options });
}

function initiator(options: Partial<ConstructorParameters<typeof PairingInitiator>[0]> = {}) {
  return new PairingInitiator({ code, offer: offerB, random: seededRandom(`initiator-${Math.random()}`), ...options });
}

/** Everything the responder did, by kind. */
interface ResponderLog {
  actions: ResponderAction[];
}

const outcomeOf = (actions: InitiatorAction[]) => actions.find((action) => action.kind === "paired" || action.kind === "failed");

/**
 * Run one exchange over an in-memory connection; `toResponder` / `toInitiator` may rewrite, drop
 * (return undefined) or record each message in flight. The initiator's clock is `skewMs` ahead.
 */
function exchange(
  listener: PairingResponder,
  dialer: PairingInitiator,
  session: number,
  options: { nowMs?: number; skewMs?: number; stepMs?: number; toResponder?: (message: PairingMessage) => PairingMessage | undefined; toInitiator?: (message: PairingMessage) => PairingMessage | undefined; log?: ResponderLog } = {},
): { initiator: InitiatorAction | undefined; responder: ResponderAction[] } {
  let now = options.nowMs ?? t0 + 1_000;
  const step = options.stepMs ?? 1;
  const skew = options.skewMs ?? 0;
  const responderActions: ResponderAction[] = [];
  let initiatorOutcome: InitiatorAction | undefined;
  let pendingForInitiator: PairingMessage[] = [];
  let open = true;
  const runResponder = (actions: ResponderAction[]) => {
    responderActions.push(...actions);
    options.log?.actions.push(...actions);
    for (const action of actions) {
      if (action.kind === "send" && action.session === session) {
        const delivered = options.toInitiator ? options.toInitiator(action.message) : action.message;
        if (delivered) pendingForInitiator.push(delivered);
      }
      if (action.kind === "close" && action.session === session) open = false;
    }
  };
  runResponder(listener.connected(session, now));
  while (pendingForInitiator.length > 0 && !initiatorOutcome) {
    const batch = pendingForInitiator;
    pendingForInitiator = [];
    for (const message of batch) {
      now += step;
      const actions = dialer.received(message, now + skew);
      initiatorOutcome ??= outcomeOf(actions);
      for (const action of actions) {
        if (action.kind !== "send" || !open) continue;
        const delivered = options.toResponder ? options.toResponder(action.message) : action.message;
        now += step;
        if (delivered) runResponder(listener.received(session, delivered, now));
      }
    }
  }
  if (!initiatorOutcome) initiatorOutcome = outcomeOf(dialer.disconnected("connection closed"));
  if (open) runResponder(listener.disconnected(session, "connection closed"));
  return { initiator: initiatorOutcome, responder: responderActions };
}

const pairedResult = (actions: ResponderAction[]) => actions.find((action): action is Extract<ResponderAction, { kind: "paired" }> => action.kind === "paired")?.result;
const hex = (bytes: Uint8Array) => Buffer.from(bytes).toString("hex");

describe("the code", () => {
  test("typed in any case, with or without the dash; refused with the reason otherwise", () => {
    expect(normalizePairingCode("k7qm-3xpa")).toBe("K7QM3XPA");
    expect(normalizePairingCode(" K7QM 3XPA ")).toBe("K7QM3XPA");
    expect(formatPairingCode("K7QM3XPA")).toBe("K7QM-3XPA");
    expect(() => normalizePairingCode("K7QM-3XP0")).toThrow("a pairing code has no 0");
    expect(() => normalizePairingCode("K7QM-3XP")).toThrow("has 8 characters, this one 7");
    expect(() => normalizePairingCode("IL1O-UUUU")).toThrow(PairingError);
  });
});

describe("pairing with the right code", () => {
  test("both nodes get the same secret and cluster id, complementary link ends and each other's addresses", () => {
    const listener = responder();
    const outcome = exchange(listener, initiator(), 1, { skewMs: 1_500 });
    expect(outcome.initiator?.kind).toBe("paired");
    const mine = (outcome.initiator as Extract<InitiatorAction, { kind: "paired" }>).result;
    const theirs = pairedResult(outcome.responder)!;
    expect(theirs).toBeDefined();
    expect(hex(mine.secret)).toBe(hex(theirs.secret));
    expect(mine.secret.length).toBe(32);
    expect(hex(mine.clusterId)).toBe(hex(theirs.clusterId));
    expect(mine.clusterId.length).toBe(16);
    // Without --connect on either side, the node that typed the code dials.
    expect(mine.local).toEqual({ name: "b", listen: "10.99.0.2:7788", connect: "dial" });
    expect(mine.peer).toMatchObject({ name: "a", listen: "10.99.0.1:7788", connect: "accept" });
    expect(theirs.local).toEqual({ name: "a", listen: "10.99.0.1:7788", connect: "accept" });
    expect(theirs.peer).toMatchObject({ name: "b", listen: "10.99.0.2:7788", connect: "dial" });
    expect(theirs.peer.offer.linkRttMs).toBe(0.2);
    // The initiator's clock is 1.5 s ahead: each side learns its offset to the other.
    expect(mine.clockOffsetMs).toBe(1_500);
    expect(theirs.clockOffsetMs).toBe(-1_500);
    expect(listener.outcome?.kind).toBe("paired");
  });

  test("the secret is fresh for every exchange even with the same code", () => {
    const first = exchange(responder({ random: seededRandom("r1") }), initiator({ random: seededRandom("i1") }), 1);
    const second = exchange(responder({ random: seededRandom("r2") }), initiator({ random: seededRandom("i2") }), 1);
    expect(hex(pairedResult(first.responder)!.secret)).not.toBe(hex(pairedResult(second.responder)!.secret));
  });

  test("--connect on one side fixes the other's end; on both sides they must differ", () => {
    const accepting = exchange(responder({ offer: { ...offerA, connect: "dial" } }), initiator(), 1);
    expect((accepting.initiator as Extract<InitiatorAction, { kind: "paired" }>).result.local.connect).toBe("accept");
    expect(pairedResult(accepting.responder)!.local.connect).toBe("dial");
    const bothDial = exchange(responder({ offer: { ...offerA, connect: "dial" } }), initiator({ offer: { ...offerB, connect: "dial" } }), 1);
    expect(bothDial.initiator).toMatchObject({ kind: "failed", code: "refused", reason: expect.stringContaining("both nodes were told to dial") });
    expect(pairedResult(bothDial.responder)).toBeUndefined();
  });

  test("one use: a second exchange with the same code is refused", () => {
    const listener = responder();
    expect(exchange(listener, initiator(), 1).initiator?.kind).toBe("paired");
    expect(exchange(listener, initiator(), 2).initiator).toMatchObject({ kind: "failed", code: "code-used" });
  });
});

describe("wrong codes, exhaustion, expiry", () => {
  test("a wrong code fails on the initiator and costs the responder one attempt, with no pairing anywhere", () => {
    const listener = responder();
    const outcome = exchange(listener, initiator({ code: "K7QM-3XPB" }), 1);
    expect(outcome.initiator).toMatchObject({ kind: "failed", code: "wrong-code" });
    expect(outcome.responder.filter((action) => action.kind === "attempt-failed")).toEqual([expect.objectContaining({ attemptsLeft: pairingAttemptsMax - 1 })]);
    expect(pairedResult(outcome.responder)).toBeUndefined();
    expect(listener.outcome).toBeUndefined();
    // The right code still works afterwards.
    expect(exchange(listener, initiator(), 2).initiator?.kind).toBe("paired");
  });

  test(`after ${pairingAttemptsMax} failed exchanges the code is burnt, and even the right code is refused`, () => {
    const listener = responder();
    const log: ResponderLog = { actions: [] };
    for (let attempt = 0; attempt < pairingAttemptsMax; attempt++) {
      expect(exchange(listener, initiator({ code: `K7QM-3XP${"BCDEF"[attempt]}` }), attempt + 1, { log }).initiator).toMatchObject({ code: "wrong-code" });
    }
    expect(log.actions.find((action) => action.kind === "failed")).toMatchObject({ code: "attempts-exhausted" });
    expect(listener.outcome).toMatchObject({ kind: "failed", code: "attempts-exhausted" });
    expect(exchange(listener, initiator(), 99).initiator).toMatchObject({ kind: "failed", code: "attempts-exhausted" });
  });

  test("an exchange that reached the reply and then went silent spends an attempt like a wrong code", () => {
    const listener = responder();
    const outcome = exchange(listener, initiator(), 1, { toResponder: (message) => (message.type === "confirm" ? undefined : message) });
    expect(outcome.responder.find((action) => action.kind === "attempt-failed")).toMatchObject({ attemptsLeft: pairingAttemptsMax - 1 });
    expect(listener.attemptsLeft).toBe(pairingAttemptsMax - 1);
  });

  test("connections that close before sending a share (the preflight's round-trip probes) cost nothing", () => {
    const listener = responder();
    for (let session = 1; session <= 20; session++) {
      listener.connected(session, t0 + session);
      listener.disconnected(session, "closed");
    }
    expect(listener.attemptsLeft).toBe(pairingAttemptsMax);
  });

  test("the code expires: refused after its lifetime, and the listener reports it on the next tick", () => {
    const listener = responder();
    expect(listener.tick(t0 + pairingCodeLifetimeMs - 1)).toEqual([]);
    expect(exchange(listener, initiator(), 1, { nowMs: t0 + pairingCodeLifetimeMs }).initiator).toMatchObject({ kind: "failed", code: "expired" });
    expect(listener.outcome).toMatchObject({ kind: "failed", code: "expired" });
    const fresh = responder();
    expect(fresh.tick(t0 + pairingCodeLifetimeMs).at(-1)).toMatchObject({ kind: "failed", code: "expired" });
  });
});

describe("attackers", () => {
  test("replay: a recorded exchange sent again gets a fresh nonce, fails its confirmation and pairs nobody", () => {
    const recorded: PairingMessage[] = [];
    const original = responder({ random: seededRandom("first") });
    exchange(original, initiator(), 1, { toResponder: (message) => (recorded.push(message), message) });
    expect(recorded.map((message) => message.type)).toEqual(["share", "confirm"]);
    // Replay the initiator's two messages to another listener showing the same code.
    const listener = responder({ random: seededRandom("second") });
    const actions: ResponderAction[] = [...listener.connected(7, t0 + 10)];
    actions.push(...listener.received(7, recorded[0]!, t0 + 11));
    expect(actions.some((action) => action.kind === "send" && action.message.type === "reply")).toBe(true);
    actions.push(...listener.received(7, recorded[1]!, t0 + 12));
    expect(actions.find((action) => action.kind === "attempt-failed")).toMatchObject({ reason: expect.stringContaining("does not match") });
    expect(pairedResult(actions)).toBeUndefined();
    // And to the original listener: the code is used.
    const again = [...original.connected(8, t0 + 20)];
    expect(again[0]).toMatchObject({ kind: "send", message: { type: "refused", code: "code-used" } });
  });

  test("a man in the middle with a guessed code fails towards both nodes; the responder loses one attempt", () => {
    const listener = responder();
    const honest = initiator();
    const guess = "ZZZZ-ZZZZ";
    // The attacker answers the honest initiator as a responder with its guess, and dials the real
    // responder as an initiator with the same guess, relaying whatever it can.
    const fakeResponder = responder({ code: guess, offer: { ...offerA }, random: seededRandom("mitm-r") });
    const fakeInitiator = initiator({ code: guess, random: seededRandom("mitm-i") });
    const towardsHonest = exchange(fakeResponder, honest, 1);
    expect(towardsHonest.initiator).toMatchObject({ kind: "failed", code: "wrong-code" });
    const towardsListener = exchange(listener, fakeInitiator, 1);
    expect(towardsListener.initiator).toMatchObject({ kind: "failed", code: "wrong-code" });
    expect(listener.attemptsLeft).toBe(pairingAttemptsMax - 1);
    expect(listener.outcome).toBeUndefined();
  });

  test("an offer altered in flight (another address slipped in) fails the confirmation", () => {
    const listener = responder();
    const outcome = exchange(listener, initiator(), 1, {
      toInitiator: (message) => (message.type === "reply" ? { ...message, offer: message.offer.replace("10.99.0.1:7788", "203.0.113.9:7788") } : message),
    });
    expect(outcome.initiator).toMatchObject({ kind: "failed", code: "wrong-code" });
    expect(pairedResult(outcome.responder)).toBeUndefined();
    const tamperedShare = exchange(responder(), initiator(), 1, {
      toResponder: (message) => (message.type === "share" ? { ...message, offer: message.offer.replace("10.99.0.2:7788", "203.0.113.9:7788") } : message),
    });
    expect(tamperedShare.initiator).toMatchObject({ kind: "failed", code: "wrong-code" });
    expect(pairedResult(tamperedShare.responder)).toBeUndefined();
  });

  test("a verdict altered in flight is not taken for the other node's", () => {
    const forged = exchange(responder(), initiator(), 1, { toInitiator: (message) => (message.type === "done" ? { ...message, verdict: JSON.stringify({ ok: false, reason: "forged" }) } : message) });
    expect(forged.initiator).toMatchObject({ kind: "failed", code: "protocol", reason: expect.stringContaining("not authentic") });
    const listener = responder();
    const altered = exchange(listener, initiator(), 1, { toResponder: (message) => (message.type === "confirm" ? { ...message, verdict: JSON.stringify({ ok: true, clockOffsetMs: 0.5 }) } : message) });
    expect(altered.responder.find((action) => action.kind === "attempt-failed")).toMatchObject({ reason: expect.stringContaining("not authentic") });
    expect(listener.outcome).toBeUndefined();
  });

  test("a low-order share is dropped without spending an attempt", () => {
    const listener = responder();
    const actions = [...listener.connected(1, t0 + 1)];
    const hello = (actions[0] as Extract<ResponderAction, { kind: "send" }>).message as Extract<PairingMessage, { type: "hello" }>;
    expect(hello.type).toBe("hello");
    const share: PairingMessage = { type: "share", nonce: "00".repeat(16), share: "01" + "00".repeat(31), offer: JSON.stringify({ ...offerB, timeMs: t0 }) };
    expect(listener.received(1, share, t0 + 2)).toEqual([{ kind: "close", session: 1, reason: "the initiator's share is a low-order point" }]);
    expect(listener.attemptsLeft).toBe(pairingAttemptsMax);
  });
});

describe("bad pairs are refused by both sides", () => {
  const refused = (outcome: ReturnType<typeof exchange>, text: string) => {
    expect(outcome.initiator).toMatchObject({ kind: "failed", code: "refused", reason: expect.stringContaining(text) });
    expect(outcome.responder.find((action) => action.kind === "failed")).toMatchObject({ code: "refused" });
    expect(pairedResult(outcome.responder)).toBeUndefined();
  };

  test("the same name on both nodes", () => refused(exchange(responder(), initiator({ offer: { ...offerB, name: "a" } }), 1), "both nodes are named a"));
  test("different witness disks", () => refused(exchange(responder(), initiator({ offer: { ...offerB, witnessId: "wwn-0x5000c500ffffffff" } }), 1), "different witness disks"));
  test("clocks a minute apart", () => refused(exchange(responder(), initiator(), 1, { skewMs: 60_000 }), "60.0 s apart"));
  test("a replication address the peer cannot dial (every address)", () => refused(exchange(responder({ offer: { ...offerA, listen: "0.0.0.0:7788" } }), initiator(), 1), "a's replication address 0.0.0.0:7788 is every address"));
});

describe("wire codec", () => {
  const messages: PairingMessage[] = [
    { type: "hello", protocol: "tandem-pairing", version: 1, nonce: "ab".repeat(16) },
    { type: "share", nonce: "cd".repeat(16), share: "ef".repeat(32), offer: JSON.stringify({ ...offerB, timeMs: t0 }) },
    { type: "reply", share: "12".repeat(32), offer: "{}", tag: "34".repeat(64) },
    { type: "confirm", tag: "56".repeat(64), verdict: '{"ok":true,"clockOffsetMs":3}', verdictTag: "78".repeat(64) },
    { type: "done", verdict: '{"ok":true,"clockOffsetMs":3}', verdictTag: "9a".repeat(64) },
    { type: "refused", code: "expired", message: "the code has expired" },
  ];

  test("round trips, and every split point of a stream of all messages", () => {
    const stream = Buffer.concat(messages.map(encodePairingMessage));
    for (let split = 0; split <= stream.length; split++) {
      const framer = new PairingFramer();
      const decoded = [...framer.push(stream.subarray(0, split)), ...framer.push(stream.subarray(split))];
      expect(decoded).toEqual(messages);
    }
    expect(decodePairingFrame(encodePairingMessage(messages[0]!).subarray(0, 5))).toBe(NEED_MORE);
  });

  test("malformed frames are errors, not 'need more'", () => {
    const frame = (body: string | Uint8Array) => {
      const bytes = typeof body === "string" ? new TextEncoder().encode(body) : body;
      const out = new Uint8Array(4 + bytes.length);
      new DataView(out.buffer).setUint32(0, bytes.length);
      out.set(bytes, 4);
      return out;
    };
    const tooLong = new Uint8Array(4);
    new DataView(tooLong.buffer).setUint32(0, pairingMessageBytesMax + 1);
    expect(() => decodePairingFrame(tooLong)).toThrow(PairingDecodeError);
    expect(() => decodePairingFrame(new Uint8Array(4))).toThrow("a frame of 0 bytes");
    expect(() => decodePairingFrame(frame("not json"))).toThrow("not UTF-8 JSON");
    expect(() => decodePairingFrame(frame(Uint8Array.of(0xff, 0xfe)))).toThrow("not UTF-8 JSON");
    expect(() => decodePairingFrame(frame("[1]"))).toThrow("not a JSON object");
    expect(() => decodePairingFrame(frame('{"type":"toString"}'))).toThrow("unknown message type");
    expect(() => decodePairingFrame(frame(JSON.stringify({ ...messages[0], extra: 1 })))).toThrow("unknown field extra");
    expect(() => decodePairingFrame(frame(JSON.stringify({ ...messages[1], share: "zz".repeat(32) })))).toThrow("bad or missing share");
    expect(() => decodePairingFrame(frame(JSON.stringify({ type: "refused", code: "nope", message: "" })))).toThrow("bad or missing code");
    expect(() => encodePairingMessage({ type: "refused", code: "busy", message: "x".repeat(pairingMessageBytesMax) })).toThrow(PairingDecodeError);
  });
});

test("results carry no more than they should: the secret never appears in a message", () => {
  const sent: PairingMessage[] = [];
  const outcome = exchange(responder(), initiator(), 1, { toResponder: (message) => (sent.push(message), message), toInitiator: (message) => (sent.push(message), message) });
  const result = (outcome.initiator as { result: PairingResult }).result;
  const wire = sent.map((message) => JSON.stringify(message)).join("");
  expect(wire).not.toContain(hex(result.secret));
  expect(wire).not.toContain(hex(result.clusterId));
});
