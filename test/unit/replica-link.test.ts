// Proves the link's handshake and frame authentication on the node cores themselves, stepped over a
// scripted network (test/helpers/link-harness.ts) with an attacker who can connect to either node,
// hold the address the dialer dials, relay, record, replay, drop, reorder, alter and inject:
//  - the reflection of issue #8 fails in both directions: the acceptor says nothing to a Hello it
//    cannot verify, the dialer says nothing on a connection it did not make, and a proof obtained
//    by holding the dialer's address is useless at the acceptor (and back at the dialer);
//  - a Hello or proof replayed on another connection is refused;
//  - a relay that forwards the handshake sees the link come up but can forge nothing: an injected,
//    replayed, reordered, dropped, altered or spliced frame is never acted on and closes the link;
//  - wrong secret, cluster, name, role and version are refused with their codes;
//  - strangers cannot keep the peer out (per-source and total bounds evict, a signed Hello cannot be
//    pushed out by replays), idle handshakes time out, and refusal reports are rate-limited with a
//    summary of what was held back.
// "Acted on" is observed through the control plane: a PeerRequest the acceptor accepts becomes a
// `peerCall` action; a request for a volume the node lacks gets an answer frame.
import { describe, expect, test } from "bun:test";
import { NodeCore } from "../../src/replica/node.ts";
import { defaultReplicaConfig } from "../../src/replica/config.ts";
import type { ReplicaReport } from "../../src/replica/types.ts";
import { encodeMessage, frameHeaderBytes, joinParts, LinkRole, markFrameTagged, type Message, MessageType } from "../../src/replica/wire.ts";
import { type Attacker, clusterId, counterRandom, type HarnessNode, LinkHarness, secret, splitFrames } from "../helpers/link-harness.ts";

const peerRequest = (requestId: number, text = "describe"): Message => ({ type: MessageType.PeerRequest, volumeId: 0, requestId, payload: new TextEncoder().encode(text) });
const bytesOf = (message: Message) => joinParts(encodeMessage(message));
const refusals = (node: HarnessNode) => node.reports.filter((report): report is Extract<ReplicaReport, { kind: "connectionRefused" }> => report.kind === "connectionRefused");
const codes = (node: HarnessNode) => refusals(node).map((report) => report.code);
const rejected = (node: HarnessNode) => node.reports.filter((report): report is Extract<ReplicaReport, { kind: "frameRejected" }> => report.kind === "frameRejected");
const peerCalls = (node: HarnessNode) => node.actions.filter((action) => action.kind === "peerCall");
const linkUps = (node: HarnessNode) => node.reports.filter((report) => report.kind === "linkUp").length;
const received = (attacker: Attacker, id: number) => joinParts(attacker.received.get(id) ?? []);

function forgedHello(claims: string, role = LinkRole.Dialer, fill = 7, versions: [number, number] = [2, 2]): Message {
  return { type: MessageType.Hello, volumeId: 0, requestId: 0, versionMin: versions[0], versionMax: versions[1], clusterId, nodeId: claims, nonce: new Uint8Array(32).fill(fill), role, flags: 0, admission: new Uint8Array(32).fill(fill + 1) };
}

/** The pair a (dials) and b (accepts) on a new harness, not connected yet. */
function pair() {
  const harness = new LinkHarness();
  const a = harness.node({ nodeId: "a", peerNodeId: "b", connect: "dial" });
  const b = harness.node({ nodeId: "b", peerNodeId: "a", connect: "accept" });
  return { harness, a, b };
}

/** The same pair, linked. */
function linkedPair() {
  const linked = pair();
  linked.harness.tick();
  return linked;
}

/** Forward bytes both ways between the dialer's intercepted connection and the attacker's connection to the acceptor. */
function relay(harness: LinkHarness, attacker: Attacker, toDialer: number, toAcceptor: number, tamper: (direction: "a→b" | "b→a", frame: Uint8Array) => Uint8Array[] = (_, frame) => [frame]) {
  const done = new Map<number, number>();
  return () => {
    for (let moved = true; moved; ) {
      moved = false;
      for (const [from, to, direction] of [
        [toDialer, toAcceptor, "a→b"],
        [toAcceptor, toDialer, "b→a"],
      ] as const) {
        const chunks = attacker.received.get(from) ?? [];
        for (let index = done.get(from) ?? 0; index < chunks.length; index++) {
          done.set(from, index + 1);
          moved = true;
          for (const frame of splitFrames(chunks[index]!)) for (const out of tamper(direction, frame)) harness.send(to, out);
        }
      }
    }
  };
}

describe("the handshake", () => {
  test("a and b link up with tagged frames, and a PeerRequest from a is acted on by b", () => {
    const { harness, a, b } = linkedPair();
    expect(linkUps(a)).toBe(1);
    expect(linkUps(b)).toBe(1);
    expect(a.core.linkStatus()).toMatchObject({ state: "up", role: "dial", framesTagged: true, version: 3 });
    expect(b.core.linkStatus()).toMatchObject({ state: "up", role: "accept", framesTagged: true });
    harness.step(a, { kind: "peerRequest", request: 1, payload: new TextEncoder().encode("describe") });
    harness.run();
    expect(peerCalls(b).length).toBe(1);
  });

  test("the acceptor sends nothing before a signed Hello, and its proof only after the dialer's", () => {
    const { harness, a, b } = pair();
    const order: string[] = [];
    harness.connectNodes(a, b, (from, bytes) => {
      for (const frame of splitFrames(bytes)) order.push(`${from}:${frame[4] === MessageType.Hello ? "Hello" : frame[4] === MessageType.Auth ? "Auth" : "frame"}`);
      return [bytes];
    });
    harness.run();
    // No Hello from b preceded a's; b's Auth comes after a's Auth.
    expect(order.slice(0, 4)).toEqual(["a:Hello", "b:Hello", "a:Auth", "b:Auth"]);
    expect(linkUps(a) + linkUps(b)).toBe(2);
  });
});

describe("reflection (issue #8) fails in both directions", () => {
  test("a stranger claiming to be a gets nothing from b: no Hello, no proof; what it sends next is never acted on", () => {
    const { harness, b } = linkedPair();
    const attacker = harness.attacker("mallory");
    const id = harness.attack(attacker, b);
    harness.send(id, joinParts([bytesOf(forgedHello("a")), bytesOf(peerRequest(9)), bytesOf({ type: MessageType.Write, volumeId: 1, requestId: 3, offset: 0, fua: false, data: new Uint8Array(4096).fill(0xaa) })]));
    expect(received(attacker, id).length).toBe(0);
    expect(harness.isOpen(id)).toBe(false);
    expect(codes(b)).toEqual(["wrong-secret"]);
    expect(peerCalls(b).length).toBe(0);
    expect(b.core.linkStatus().state).toBe("up"); // the real link is untouched
  });

  test("a stranger claiming to be b gets nothing from a: the dialer accepts no connection", () => {
    const { harness, a } = linkedPair();
    const attacker = harness.attacker("mallory");
    const id = harness.attack(attacker, a);
    harness.send(id, joinParts([bytesOf(forgedHello("b", LinkRole.Acceptor)), bytesOf(peerRequest(9))]));
    expect(received(attacker, id).length).toBe(0);
    expect(harness.isOpen(id)).toBe(false);
    expect(codes(a)).toEqual(["inbound-on-dialer"]);
    expect(peerCalls(a).length).toBe(0);
    expect(a.core.linkStatus().state).toBe("up");
  });

  test("holding a's dial, the attacker gets a's proof for its own transcript: useless at b, and useless sent back to a", () => {
    const { harness, a, b } = pair();
    const attacker = harness.attacker("mallory");
    const toA = harness.interceptDial(a, attacker);
    harness.run();
    const helloFromA = splitFrames(received(attacker, toA))[0]!;
    // Pretend to be b towards a: an acceptor Hello of the attacker's choosing. a answers with its proof.
    harness.send(toA, bytesOf(forgedHello("b", LinkRole.Acceptor, 11)));
    const proofFromA = splitFrames(received(attacker, toA))[1]!;
    expect(proofFromA[4]).toBe(MessageType.Auth);
    // At b: a's genuine Hello is accepted (signed, fresh), b answers with its own Hello, no proof...
    const toB = harness.attack(attacker, b);
    harness.send(toB, helloFromA);
    expect(splitFrames(received(attacker, toB)).map((frame) => frame[4])).toEqual([MessageType.Hello]);
    // ...and a's proof, made over another transcript (another acceptor nonce), does not check.
    harness.send(toB, proofFromA);
    expect(codes(b)).toEqual(["proof-failed"]);
    expect(splitFrames(received(attacker, toB)).length).toBe(1); // b never proved anything
    // Reflected to a as if it were the acceptor's proof: refused too.
    harness.send(toA, proofFromA);
    expect(codes(a)).toEqual(["proof-failed"]);
    expect(linkUps(a) + linkUps(b)).toBe(0);
  });

  test("a's own Hello sent back to a, and b's Hello sent to b, are refused by role", () => {
    const { harness, a, b } = pair();
    const attacker = harness.attacker("mallory");
    const toA = harness.interceptDial(a, attacker);
    harness.run();
    harness.send(toA, received(attacker, toA));
    expect(codes(a)).toEqual(["wrong-role"]);
    const toB = harness.attack(attacker, b);
    harness.send(toB, bytesOf(forgedHello("a", LinkRole.Acceptor)));
    expect(codes(b)).toEqual(["wrong-role"]);
  });
});

describe("replays", () => {
  test("a recorded Hello is refused by the acceptor that saw it, and its recorded proof fails after a restart", () => {
    const { harness, a, b } = pair();
    const recorded: Uint8Array[] = [];
    harness.connectNodes(a, b, (from, bytes) => {
      if (from === "a") recorded.push(...splitFrames(bytes));
      return [bytes];
    });
    harness.run();
    expect(linkUps(b)).toBe(1);
    const [hello, proof] = recorded;
    const attacker = harness.attacker("mallory");
    const replay = harness.attack(attacker, b);
    harness.send(replay, joinParts([hello!, proof!]));
    expect(codes(b)).toEqual(["replayed-hello"]);
    // b restarted (its memory of nonces is gone): the Hello passes, the old proof does not.
    const restarted = harness.node({ nodeId: "b", peerNodeId: "a", connect: "accept" }, { seed: 99 });
    const again = harness.attack(attacker, restarted);
    harness.send(again, joinParts([hello!, proof!]));
    expect(codes(restarted)).toEqual(["proof-failed"]);
    expect(linkUps(restarted)).toBe(0);
  });
});

describe("a relay in the middle", () => {
  function relayedPair(tamper?: Parameters<typeof relay>[4], seed = 1) {
    const harness = new LinkHarness();
    const a = harness.node({ nodeId: "a", peerNodeId: "b", connect: "dial" }, { seed });
    const b = harness.node({ nodeId: "b", peerNodeId: "a", connect: "accept" }, { seed: seed + 1 });
    const attacker = harness.attacker("mallory");
    const toA = harness.interceptDial(a, attacker);
    const toB = harness.attack(attacker, b);
    const pump = relay(harness, attacker, toA, toB, tamper);
    harness.run();
    pump();
    return { harness, a, b, toA, toB, pump };
  }

  test("forwarding the handshake brings the link up, but an injected frame is never acted on", () => {
    const { harness, a, b, toB } = relayedPair();
    expect(linkUps(a)).toBe(1);
    expect(linkUps(b)).toBe(1);
    // Untagged, then with a made-up tag: both closes the link at b, and no peerCall.
    harness.send(toB, bytesOf(peerRequest(41, "delete")));
    expect(rejected(b).map((report) => report.code)).toEqual(["missing-tag"]);
    expect(peerCalls(b).length).toBe(0);
    expect(b.core.linkStatus().state).not.toBe("up");

    const second = relayedPair();
    const parts = encodeMessage(peerRequest(42, "delete"));
    markFrameTagged(parts[0]!);
    second.harness.send(second.toB, joinParts([...parts, new Uint8Array(16).fill(1)]));
    expect(rejected(second.b).map((report) => report.code)).toEqual(["bad-tag"]);
    expect(peerCalls(second.b).length).toBe(0);
  });

  const tamperCases: [string, (frames: Uint8Array[]) => Uint8Array[]][] = [
    ["replayed", (frames) => [frames[0]!, frames[0]!]],
    ["reordered", (frames) => [frames[1]!, frames[0]!]],
    ["dropped", (frames) => [frames[1]!]],
    [
      "altered",
      (frames) => {
        const altered = frames[0]!.slice();
        altered[frameHeaderBytes + 5] = altered[frameHeaderBytes + 5]! ^ 0x10;
        return [altered, frames[1]!];
      },
    ],
  ];
  for (const [name, change] of tamperCases) {
    test(`a frame ${name} on the way closes the connection and is never acted on`, () => {
      const held: Uint8Array[] = [];
      let holding = false;
      const { harness, a, b, pump } = relayedPair((direction, frame) => {
        if (direction !== "a→b" || !holding) return [frame];
        held.push(frame);
        return held.length === 2 ? change(held) : [];
      });
      holding = true;
      harness.step(a, { kind: "peerRequest", request: 1, payload: new TextEncoder().encode("one") });
      harness.step(a, { kind: "peerRequest", request: 2, payload: new TextEncoder().encode("two") });
      harness.run();
      pump();
      expect(rejected(b).map((report) => report.code)).toEqual(["bad-tag"]);
      // At most the frames before the tampered one were acted on, never the tampered one or any after.
      const delivered = name === "dropped" || name === "reordered" || name === "altered" ? 0 : 1;
      expect(peerCalls(b).length).toBe(delivered);
      expect(b.core.linkStatus().state).not.toBe("up");
    });
  }

  test("a frame spliced from an earlier session at the same position fails", () => {
    const earlier: Uint8Array[] = [];
    const first = relayedPair((direction, frame) => {
      if (direction === "a→b" && frame[4] === MessageType.PeerRequest) earlier.push(frame);
      return [frame];
    });
    first.harness.step(first.a, { kind: "peerRequest", request: 1, payload: new TextEncoder().encode("delete demo") });
    first.harness.run();
    first.pump();
    expect(peerCalls(first.b).length).toBe(1);
    expect(earlier.length).toBe(1);
    const second = relayedPair(undefined, 7); // fresh nonces, as every real connection has
    second.harness.send(second.toB, earlier[0]!);
    expect(rejected(second.b).map((report) => report.code)).toEqual(["bad-tag"]);
    expect(peerCalls(second.b).length).toBe(0);
  });
});

describe("refused with the right code", () => {
  const cases: [string, Parameters<LinkHarness["node"]>[0], string, string][] = [
    ["wrong secret", { nodeId: "a", peerNodeId: "b", connect: "dial", secret: new TextEncoder().encode("not the pair's secret at all") }, "wrong-secret", "closed-by-peer"],
    ["wrong cluster", { nodeId: "a", peerNodeId: "b", connect: "dial", clusterId: new Uint8Array(16).fill(9) }, "wrong-cluster", "closed-by-peer"],
    ["wrong name", { nodeId: "c", peerNodeId: "b", connect: "dial" }, "wrong-name", "closed-by-peer"],
    ["both dial", { nodeId: "a", peerNodeId: "b", connect: "dial" }, "inbound-on-dialer", "closed-by-peer"],
  ];
  for (const [name, dialer, acceptorCode, dialerCode] of cases) {
    test(name, () => {
      const harness = new LinkHarness();
      const a = harness.node(dialer);
      const b = harness.node({ nodeId: "b", peerNodeId: "a", connect: name === "both dial" ? "dial" : "accept" });
      harness.tick(0);
      harness.connectNodes(a, b);
      harness.run();
      expect(codes(b)).toEqual([acceptorCode]);
      expect(codes(a)).toEqual([dialerCode]);
      expect(linkUps(a) + linkUps(b)).toBe(0);
      expect(a.core.linkStatus().lastError).toMatch(/refused this node/);
    });
  }

  test("a Hello offering only other protocol versions is refused and says which", () => {
    const harness = new LinkHarness();
    const b = harness.node({ nodeId: "b", peerNodeId: "a", connect: "accept" });
    const attacker = harness.attacker("newer");
    harness.send(harness.attack(attacker, b), bytesOf(forgedHello("a", LinkRole.Dialer, 4, [4, 5])));
    expect(codes(b)).toEqual(["version"]);
    expect(refusals(b)[0]!.reason).toMatch(/ours 2\.\.3, peer 4\.\.5/);
  });

  test("a dialer and a peer that disagree on untagged frames are refused", () => {
    const harness = new LinkHarness();
    const a = harness.node({ nodeId: "a", peerNodeId: "b", connect: "dial", untaggedFrames: true });
    const b = harness.node({ nodeId: "b", peerNodeId: "a", connect: "accept" });
    harness.tick();
    expect(codes(b)).toEqual(["frame-authentication-mismatch"]);
    expect(linkUps(a) + linkUps(b)).toBe(0);
  });

  test("both asking for untagged frames (benchmarks) link up untagged, and status says so", () => {
    const harness = new LinkHarness();
    const a = harness.node({ nodeId: "a", peerNodeId: "b", connect: "dial", untaggedFrames: true });
    const b = harness.node({ nodeId: "b", peerNodeId: "a", connect: "accept", untaggedFrames: true });
    harness.tick();
    expect(a.core.linkStatus()).toMatchObject({ state: "up", framesTagged: false });
    expect(b.reports.find((report) => report.kind === "linkUp")).toMatchObject({ framesTagged: false });
  });
});

describe("strangers cannot keep the peer out", () => {
  test("200 idle strangers on the peer's own address, then a dials: the link comes up", () => {
    const harness = new LinkHarness();
    const a = harness.node({ nodeId: "a", peerNodeId: "b", connect: "dial" }, { host: "10.0.0.1" });
    const b = harness.node({ nodeId: "b", peerNodeId: "a", connect: "accept" });
    const attacker = harness.attacker("mallory", "10.0.0.1"); // a non-root user on a's own host
    for (let index = 0; index < 200; index++) harness.attack(attacker, b);
    void a;
    expect(b.core.linkStatus().connectionsPending).toBeLessThanOrEqual(b.core.config.pendingConnectionsPerSourceMax);
    harness.tick();
    expect(linkUps(b)).toBe(1);
    expect(codes(b).every((code) => code === "evicted")).toBe(true);
  });

  test("strangers from many addresses fill the total bound; the busiest source gives way", () => {
    const harness = new LinkHarness();
    const a = harness.node({ nodeId: "a", peerNodeId: "b", connect: "dial" }, { host: "10.0.0.1" });
    const b = harness.node({ nodeId: "b", peerNodeId: "a", connect: "accept" });
    for (let host = 0; host < 100; host++) {
      const attacker = harness.attacker(`stranger-${host}`, `10.0.1.${host}`);
      for (let index = 0; index < 3; index++) harness.attack(attacker, b);
    }
    expect(b.core.linkStatus().connectionsPending).toBeLessThanOrEqual(b.core.config.pendingConnectionsMax);
    harness.tick();
    expect(linkUps(a)).toBe(1);
  });

  test("replayed signed Hellos (after b restarted) cannot hold the admitted slots against the real a", () => {
    const harness = new LinkHarness();
    const a = harness.node({ nodeId: "a", peerNodeId: "b", connect: "dial" });
    const attacker = harness.attacker("mallory");
    // Record several of a's genuine Hellos by holding its dial target for a while.
    const hellos: Uint8Array[] = [];
    for (let index = 0; index < 5; index++) {
      const id = harness.interceptDial(a, attacker);
      harness.run();
      hellos.push(splitFrames(received(attacker, id))[0]!);
      harness.step(a, { kind: "closed", connection: id, reason: "reset" });
    }
    const b = harness.node({ nodeId: "b", peerNodeId: "a", connect: "accept" });
    for (const hello of hellos) harness.send(harness.attack(attacker, b), hello);
    expect(b.core.linkStatus().connectionsPending).toBeLessThanOrEqual(b.core.config.admittedConnectionsMax);
    harness.connectNodes(a, b);
    harness.run();
    expect(linkUps(b)).toBe(1);
    expect(codes(b).filter((code) => code === "superseded").length).toBeGreaterThanOrEqual(hellos.length - b.core.config.admittedConnectionsMax);
  });

  test("an idle handshake is closed after the handshake timeout, not before", () => {
    const harness = new LinkHarness();
    const b = harness.node({ nodeId: "b", peerNodeId: "a", connect: "accept" });
    const attacker = harness.attacker("slow");
    const id = harness.attack(attacker, b);
    harness.tick(b.core.config.handshakeTimeoutTicks - 1);
    expect(harness.isOpen(id)).toBe(true);
    harness.tick(1);
    expect(harness.isOpen(id)).toBe(false);
    expect(codes(b)).toEqual(["handshake-timeout"]);
  });

  test("1000 refusals of one kind make at most one window's worth of reports and one summary with the count; another kind still gets through", () => {
    const harness = new LinkHarness();
    const b = harness.node({ nodeId: "b", peerNodeId: "a", connect: "accept" });
    const config = b.core.config;
    for (let index = 0; index < 1000; index++) {
      const attacker = harness.attacker(`junk-${index}`, `10.0.2.${index % 250}`);
      harness.send(harness.attack(attacker, b), new Uint8Array(64).fill(index & 0xff));
    }
    expect(refusals(b).length).toBe(config.refusalReportsPerCodeMax);
    // The real peer with a wrong secret, in the middle of the flood: still reported.
    const misconfigured = harness.node({ nodeId: "a", peerNodeId: "b", connect: "dial", secret: new TextEncoder().encode("the secret before the rotation") });
    harness.connectNodes(misconfigured, b);
    harness.run();
    expect(codes(b).at(-1)).toBe("wrong-secret");
    harness.tick(config.refusalReportWindowTicks);
    const summaries = b.reports.filter((report) => report.kind === "reportsSuppressed");
    // (The misconfigured dialer kept redialling meanwhile; its refusals beyond the per-code bound are held too.)
    expect(summaries.length).toBe(1);
    const summary = summaries[0] as Extract<ReplicaReport, { kind: "reportsSuppressed" }>;
    expect(summary.byCode.malformed).toBe(1000 - config.refusalReportsPerCodeMax);
    expect(summary.count).toBe(Object.values(summary.byCode).reduce((sum, count) => sum + count, 0));
    expect(summary.windowMs).toBe(config.refusalReportWindowTicks * config.tickMs);
    expect(refusals(b).length).toBeLessThanOrEqual(config.refusalReportsPerWindowMax);
    expect(b.core.linkStatus().refusedConnections).toBe(refusals(b).length + summary.count);
  });
});

test("the core refuses to be built with the same name on both ends", () => {
  expect(() => new NodeCore({ nodeId: "a", peerNodeId: "a", clusterId, secret, connect: "dial" }, defaultReplicaConfig(), counterRandom(1))).toThrow();
});
