// The attack of issue #8 against the two-node lab, run by a real TCP client without the pairing
// secret, and the starvation of the link by strangers:
//  - towards b (which accepts) claiming to be a, and towards a (which dials and refuses every
//    connection) claiming to be b, the attacker tries the old reflection and then, past its failed
//    handshake, to read a block, write a block, delete the volume with a PeerRequest and claim "I
//    wrote alone since your generation" (a VolumeHello that would make the node a resync target).
//    Each is refused: the attacker never receives a byte (no Hello, no proof), the connection is
//    closed, the data read back over NBD on both nodes is unchanged, the volume is still there and
//    synced, the real link never went down (its `sinceMs` did not move), and `tandem events` on
//    both nodes lists the refusals;
//  - idle strangers and a flood of connections on b's replication port while b is killed and
//    restarted: the link comes back within a bound derived from the configuration, and the number
//    of refusal lines in the log and of events stays within the rate limit.
// Two real daemons and the lab relay; bounded waits throughout.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { crc32c } from "../../src/common/crc32c.ts";
import { replicaHandshakeTimeoutMs, replicaReconnectDelayMsMax, replicaRefusalReportsPerWindowMax, replicaRefusalReportWindowMs } from "../../src/constants.ts";
import { encodeMessage, frameHeaderBytes, joinParts, LinkRole, markFrameTagged, type Message, MessageType } from "../../src/replica/wire.ts";
import { repositoryRoot, runCli } from "../helpers/daemon.ts";
import { labCli, labVolume, waitLabSynced } from "../helpers/lab.ts";
import { NbdClient } from "../helpers/nbd-client.ts";
import { DataState } from "../../src/replica/model.ts";

const MiB = 1024 * 1024;
const volume = "secure";
const volumeBytes = 16 * MiB;
// The flooding stranger is another machine on the replication network: it connects from another
// loopback address than the lab's link (which reaches b from 127.0.0.1). A stranger sharing the
// peer's own address can evict the peer's connection before its signed Hello arrives (see
// makeRoomFor in the replica node); that is a process on the peer's host, not a stranger.
const strangerAddress = process.env.STRANGER_ADDRESS ?? "127.0.0.2";
const pattern = (fill: number) => new Uint8Array(4096).fill(fill);

let dir: string;
let ports: { listen: Record<string, number>; relay: Record<string, number> };
let clusterId: Uint8Array;
let volumeId: number;
let generation: bigint;

const cli = (args: string[], node = "a") => labCli(dir, args, node);
const lab = (args: string[]) => runCli(["lab", ...args, "--dir", dir], { timeoutMs: 90_000 });

interface LinkJson {
  connected: boolean;
  sinceMs: number;
  role: string;
  framesTagged: boolean;
}
async function link(node: string): Promise<LinkJson | undefined> {
  const result = await cli(["status", "--json"], node);
  if (result.code !== 0) return undefined;
  return (JSON.parse(result.stdout) as { node: { link: LinkJson } }).node.link;
}

interface EventJson {
  kind: string;
  level: string;
  message: string;
}
async function events(node: string): Promise<EventJson[]> {
  const result = await cli(["events", "--limit", "10000", "--json"], node);
  expect(result.code).toBe(0);
  return (JSON.parse(result.stdout) as { events: EventJson[] }).events;
}

function logRecords(node: string): { msg?: string; code?: string }[] {
  return fs
    .readFileSync(path.join(dir, node, "node.log"), "utf8")
    .split("\n")
    .filter((line) => line.startsWith("{"))
    .map((line) => JSON.parse(line));
}

async function readBlocks(node: string): Promise<Uint8Array> {
  const client = await NbdClient.connect({ unix: path.join(dir, node, "nbd.sock") }, { name: volume });
  try {
    return await client.read(0, 8192);
  } finally {
    await client.disconnect();
  }
}

/** Connect as a stranger, send `bytes`, and collect what the node sends until it closes (bounded). */
async function stranger(port: number, bytes: Uint8Array): Promise<{ received: number; closedAfterMs: number }> {
  let received = 0;
  const started = performance.now();
  const closed = Promise.withResolvers<void>();
  const socket = await Bun.connect({
    hostname: "127.0.0.1",
    port,
    socket: {
      open(socket) {
        socket.write(bytes);
      },
      data(_socket, data) {
        received += data.length;
      },
      close() {
        closed.resolve();
      },
      error() {
        closed.resolve();
      },
    },
  });
  const timer = setTimeout(() => socket.terminate(), replicaHandshakeTimeoutMs * 3);
  await closed.promise;
  clearTimeout(timer);
  return { received, closedAfterMs: performance.now() - started };
}

const random = (length: number) => crypto.getRandomValues(new Uint8Array(length));
const frame = (message: Message) => joinParts(encodeMessage(message));

/** A version-2 dialer Hello with a made-up admission tag. */
function hello(claims: string, role: LinkRole): Uint8Array {
  return frame({ type: MessageType.Hello, volumeId: 0, requestId: 0, versionMin: 2, versionMax: 2, clusterId, nodeId: claims, nonce: random(32), role, flags: 0, admission: random(32) });
}

/** The Hello of the reflection attack as issue #8 ran it (protocol 1: no role, no admission tag). */
function versionOneHello(claims: string): Uint8Array {
  const full = frame({ type: MessageType.Hello, volumeId: 0, requestId: 0, versionMin: 1, versionMax: 1, clusterId, nodeId: claims, nonce: random(32), role: LinkRole.Dialer, flags: 0, admission: new Uint8Array(0) });
  const body = full.subarray(frameHeaderBytes, full.length - 3);
  const out = joinParts([full.subarray(0, frameHeaderBytes), body]);
  const view = new DataView(out.buffer);
  view.setUint32(12, body.length, true);
  view.setUint32(24, crc32c(body), true);
  view.setUint32(28, crc32c(out.subarray(0, 28)), true);
  return out;
}

/** What the attacker wants done once "authenticated": read, write, delete, and become the resync source. */
function attackMessages(): Message[] {
  const next = generation ^ 0x5a5a5a5a5a5a5a5an;
  return [
    { type: MessageType.ReadRequest, volumeId, requestId: 1, offset: 0, length: 4096 },
    { type: MessageType.Write, volumeId, requestId: 2, offset: 0, fua: true, data: pattern(0xee) },
    { type: MessageType.PeerRequest, volumeId: 0, requestId: 3, payload: new TextEncoder().encode(JSON.stringify({ op: "delete", name: volume, force: true })) },
    {
      type: MessageType.VolumeHello,
      volumeId,
      requestId: 0,
      seq: 1,
      sizeBytes: volumeBytes,
      granuleBytes: 4096,
      generations: { current: next, bitmapBase: generation, history: [generation] },
      dataState: DataState.Consistent,
      mayWrite: true,
      bitsSet: 1,
      redecide: true,
    },
  ];
}

/** The attack messages untagged, and again each with a made-up tag (as if the handshake had passed). */
function attackFrames(): Uint8Array {
  const messages = attackMessages();
  const tagged = messages.map((message) => {
    const parts = encodeMessage(message);
    markFrameTagged(parts[0]!);
    return joinParts([...parts, random(16)]);
  });
  return joinParts([...messages.map(frame), ...tagged]);
}

const waitSynced = () => waitLabSynced(dir, volume, 120_000);

describe("an attacker without the pairing secret on the replication ports", () => {
  beforeAll(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), "tandem-link-security-"));
    const up = await lab(["up", "--json"]);
    if (up.code !== 0) throw new Error(`lab up failed: ${up.stdout}${up.stderr}`);
    ports = (JSON.parse(fs.readFileSync(path.join(dir, "lab.json"), "utf8")) as { ports: typeof ports }).ports;
    clusterId = Uint8Array.from(Buffer.from(fs.readFileSync(path.join(dir, "cluster.id"), "utf8").trim(), "hex"));
    const created = await cli(["volume", "create", volume, "--size", `${volumeBytes}`]);
    if (created.code !== 0) throw new Error(`volume create failed: ${created.stderr}`);
    await waitSynced();
    const client = await NbdClient.connect({ unix: path.join(dir, "a", "nbd.sock") }, { name: volume });
    await client.write(0, pattern(0x5a));
    await client.write(4096, pattern(0xa5));
    await client.flush();
    await client.disconnect();
    await waitSynced();
    const view = (await labVolume(dir, volume, "a"))!;
    volumeId = (view as unknown as { id: number }).id;
    generation = BigInt(`0x${(view.nodes[0] as unknown as { detail: { current: string } }).detail.current}`);
  });

  afterAll(async () => {
    await lab(["down"]);
    fs.rmSync(dir, { recursive: true, force: true });
  });

  test("reflection, read, write, delete and the 'I wrote alone' claim are refused in both directions; nothing changes", async () => {
    const before = { a: await link("a"), b: await link("b") };
    expect(before.a).toMatchObject({ connected: true, role: "dial", framesTagged: true });
    expect(before.b).toMatchObject({ connected: true, role: "accept", framesTagged: true });

    const attempts: [string, number, Uint8Array][] = [
      // Towards b, which accepts: claiming to be a.
      ["b: the issue's protocol-1 Hello, then the attack", ports.listen.b!, joinParts([versionOneHello("a"), attackFrames()])],
      ["b: a protocol-2 Hello with a forged admission tag, a forged proof, then the attack", ports.listen.b!, joinParts([hello("a", LinkRole.Dialer), frame({ type: MessageType.Auth, volumeId: 0, requestId: 0, mac: random(32) }), attackFrames()])],
      ["b: the attack with no handshake at all", ports.listen.b!, attackFrames()],
      ["b: through the relay's port, as a's traffic arrives", ports.relay.b!, joinParts([hello("a", LinkRole.Dialer), attackFrames()])],
      // Towards a, which dials and accepts nothing: claiming to be b.
      ["a: the issue's protocol-1 Hello, then the attack", ports.listen.a!, joinParts([versionOneHello("b"), attackFrames()])],
      ["a: an acceptor's Hello, then the attack", ports.listen.a!, joinParts([hello("b", LinkRole.Acceptor), attackFrames()])],
    ];
    for (const [what, port, bytes] of attempts) {
      const outcome = await stranger(port, bytes);
      expect({ what, received: outcome.received }).toEqual({ what, received: 0 }); // no Hello, no proof, no data
      expect(outcome.closedAfterMs).toBeLessThan(replicaHandshakeTimeoutMs * 2);
    }

    // Data, volume and link as they were.
    for (const node of ["a", "b"]) {
      const blocks = await readBlocks(node);
      expect(blocks.subarray(0, 4096)).toEqual(pattern(0x5a));
      expect(blocks.subarray(4096)).toEqual(pattern(0xa5));
      const view = await labVolume(dir, volume, node);
      expect(view?.nodes.map((replica) => replica.state)).toEqual(["synced", "synced"]);
    }
    const after = { a: await link("a"), b: await link("b") };
    expect(after.a).toMatchObject({ connected: true, sinceMs: before.a!.sinceMs });
    expect(after.b).toMatchObject({ connected: true, sinceMs: before.b!.sinceMs });

    // The refusals are in the event logs, with their reasons.
    const onB = (await events("b")).filter((event) => event.kind === "link-refused");
    const onA = (await events("a")).filter((event) => event.kind === "link-refused");
    expect(onB.some((event) => /^malformed .*protocol 1\.\.1 Hello/.test(event.message))).toBe(true);
    expect(onB.some((event) => /^wrong-secret /.test(event.message))).toBe(true);
    expect(onB.some((event) => /^unexpected-message /.test(event.message))).toBe(true);
    expect(onA.filter((event) => /^inbound-on-dialer /.test(event.message)).length).toBe(2);
    for (const event of [...onA, ...onB]) expect(event.level).toBe("warn");
  }, 120_000);

  test("strangers flooding b's port while b restarts do not keep the link down; logs and events stay bounded", async () => {
    const floodSeconds = 20;
    const eventsBefore = (await events("b")).length;
    const refusalLinesBefore = logRecords("b").filter((record) => record.msg === "connectionRefused").length;
    const flood = Bun.spawn([process.execPath, path.join(repositoryRoot, "test/helpers/link-stranger.ts"), "127.0.0.1", String(ports.listen.b), "30", String(floodSeconds), strangerAddress], { stdout: "pipe", stderr: "inherit" });
    try {
      expect((await lab(["kill", "b"])).code).toBe(0);
      expect((await lab(["start", "b"])).code).toBe(0);
      const started = performance.now();
      // The bound: a's redial delay at its largest, plus one handshake that fails and one that succeeds.
      const boundMs = replicaReconnectDelayMsMax + 2 * replicaHandshakeTimeoutMs;
      let upAfterMs: number | undefined;
      while (performance.now() - started < boundMs * 3) {
        const [a, b] = [await link("a"), await link("b")];
        if (a?.connected && b?.connected) {
          upAfterMs = performance.now() - started;
          break;
        }
        await Bun.sleep(100);
      }
      console.log(`link back ${upAfterMs?.toFixed(0)} ms after b answered again, under a flood (bound ${boundMs} ms)`);
      expect(upAfterMs).toBeDefined();
      expect(upAfterMs!).toBeLessThan(boundMs);
    } finally {
      const summary = JSON.parse((await new Response(flood.stdout).text()).trim()) as { connects: number };
      await flood.exited;
      console.log(`stranger: ${JSON.stringify(summary)}`);
      expect(summary.connects).toBeGreaterThan(1000); // a real flood, not a trickle
    }
    await waitSynced();
    // Reports per window are bounded; the flood lasted floodSeconds, so at most this many windows.
    const windows = Math.ceil((floodSeconds * 1000) / replicaRefusalReportWindowMs) + 2;
    const refusalLines = logRecords("b").filter((record) => record.msg === "connectionRefused").length - refusalLinesBefore;
    const newEvents = (await events("b")).slice(eventsBefore);
    console.log(`b logged ${refusalLines} refusals and recorded ${newEvents.length} events during the flood`);
    expect(refusalLines).toBeLessThanOrEqual(windows * replicaRefusalReportsPerWindowMax);
    expect(newEvents.length).toBeLessThanOrEqual(windows * (replicaRefusalReportsPerWindowMax + 1) + 10);
    expect(newEvents.some((event) => event.kind === "link-refusals-suppressed")).toBe(true);
  }, 180_000);
});
