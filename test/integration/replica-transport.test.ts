// The replication link's TCP transport over loopback: what one side sends, in many parts over many
// turns and faster than the kernel takes it, arrives on the other side byte for byte and in order.
// The transport joins each turn's parts in a buffer it reuses and leaves what the kernel did not
// take to its write queue, which must keep a copy: a queue that kept a view of the join buffer
// would send later turns' bytes in place of earlier ones, and this test would see them. The
// receiving side hands the chunks Bun gives it to the handler without copying them: the test keeps
// every chunk until the end, so a runtime (or a transport) that reused a receive buffer fails it.
import { afterEach, expect, test } from "bun:test";
import { joinPayload, type Payload, Pieces } from "../../src/common/bytes.ts";
import { silentLogger } from "../../src/common/log.ts";
import { MemoryLayer } from "../../src/node/block/memory.ts";
import { PassThroughLayer, type WriteFlags, type ZeroFlags } from "../../src/node/block/layer.ts";
import { BlockLayerStorage } from "../../src/node/replica/io-adapters.ts";
import { TcpPeerTransport } from "../../src/node/replica/tcp-transport.ts";
import type { PeerTransportHandler } from "../../src/replica/io.ts";
import { until } from "../helpers/until.ts";

const transports: TcpPeerTransport[] = [];
afterEach(() => {
  for (const transport of transports.splice(0)) transport.stop();
});

function recorder() {
  const state = { connections: [] as number[], received: [] as Uint8Array[], bytes: 0, closed: [] as string[] };
  const handler: PeerTransportHandler = {
    connected: (connection) => void state.connections.push(connection),
    dialFailed: (reason) => void state.closed.push(`dial failed: ${reason}`),
    data: (_connection, bytes) => {
      state.received.push(bytes);
      state.bytes += bytes.length;
    },
    closed: (_connection, reason) => void state.closed.push(reason),
  };
  return { state, handler };
}

/** The bytes of turn `turn`, part `part`: a pattern that differs from every other turn's. */
function part(turn: number, index: number, length: number): Uint8Array {
  const bytes = new Uint8Array(length);
  for (let offset = 0; offset < length; offset++) bytes[offset] = (turn * 31 + index * 7 + offset) & 0xff;
  return bytes;
}

/** A listening transport and one that dialled it, connected: the acceptor records what arrives. */
async function connectedPair() {
  const acceptor = recorder();
  const listening = new TcpPeerTransport({ listen: { hostname: "127.0.0.1", port: 0 }, peer: { hostname: "127.0.0.1", port: 1 }, log: silentLogger });
  transports.push(listening);
  listening.attach(acceptor.handler);
  listening.listen();
  const dialer = recorder();
  const dialling = new TcpPeerTransport({ listen: undefined, peer: { hostname: "127.0.0.1", port: listening.listenPort! }, log: silentLogger });
  transports.push(dialling);
  dialling.attach(dialer.handler);
  dialling.dial();
  const connection = await until("the dialer connected", () => dialer.state.connections[0]);
  await until("the listener accepted", () => acceptor.state.connections.length > 0);
  return { acceptor, dialling, connection };
}

test("parts sent over many turns arrive whole and in order, also when the kernel takes them in pieces", async () => {
  const { acceptor, dialling, connection } = await connectedPair();

  // 200 turns of a frame-like message (a small head, a 60 KiB body, a tag): 12 MiB, more than
  // loopback's socket buffers hold, sent before the receiver gets a turn to read any of it.
  const expected: Uint8Array[] = [];
  for (let turn = 0; turn < 200; turn++) {
    const parts = [part(turn, 0, 40), part(turn, 1, 60 * 1024), part(turn, 2, 16)];
    expected.push(...parts);
    dialling.send(connection, parts);
    await Promise.resolve(); // the turn ends: the transport writes what it gathered
  }
  const total = expected.reduce((sum, bytes) => sum + bytes.length, 0);
  await until("everything arrived", () => acceptor.state.bytes >= total, 30_000);
  expect(acceptor.state.bytes).toBe(total);
  expect(acceptor.state.closed).toEqual([]);
  const sent = Buffer.concat(expected);
  const received = Buffer.concat(acceptor.state.received);
  const firstDifference = sent.findIndex((byte, index) => byte !== received[index]);
  expect(firstDifference).toBe(-1);
});

test("a write issued after a send in the same turn starts once the send is in the socket (the peer's half overlaps the local one)", async () => {
  const { acceptor, dialling, connection } = await connectedPair();

  // What the replica driver does for a mirrored write, in one turn: the core's send, then its local
  // write. The layer notes, as each IO starts, how many bytes of the turn were still held back.
  const heldBack: Record<string, number> = {};
  class Watching extends PassThroughLayer {
    readonly kind = "watching";
    override write(offset: number, source: Payload, flags?: WriteFlags): Promise<void> {
      heldBack.write = dialling.gatheredBytes(connection);
      return super.write(offset, source, flags);
    }
    override trim(offset: number, length: number, flags?: WriteFlags): Promise<void> {
      heldBack.trim = dialling.gatheredBytes(connection);
      return super.trim(offset, length, flags);
    }
    override zero(offset: number, length: number, flags?: ZeroFlags): Promise<void> {
      heldBack.zero = dialling.gatheredBytes(connection);
      return super.zero(offset, length, flags);
    }
  }
  const storage = new BlockLayerStorage(new Watching(new MemoryLayer(1 << 20)));
  const finished: (string | null)[] = [];
  const frame = part(1, 0, 4096 + 64);
  dialling.send(connection, [frame]);
  storage.write(0, part(2, 0, 4096), false, (error) => finished.push(error));
  dialling.send(connection, [frame]);
  storage.trim(4096, 4096, false, (error) => finished.push(error));
  dialling.send(connection, [frame]);
  storage.zero(8192, 4096, false, false, (error) => finished.push(error));
  expect(dialling.gatheredBytes(connection)).toBe(3 * frame.length); // nothing has started yet
  await until("the three IOs finished", () => finished.length === 3);
  expect({ heldBack, finished }).toEqual({ heldBack: { write: 0, trim: 0, zero: 0 }, finished: [null, null, null] });
  await until("the frames arrived", () => acceptor.state.bytes === 3 * frame.length);
});

test("a socket that lost its remote address as it opened still reports one: the dialled peer's, else 'unknown'", () => {
  // Seen when the peer's daemon is killed mid-dial: Bun opens the socket with no remote address.
  // The core formats the address into its refusal reports, and threw on an undefined host.
  const transport = new TcpPeerTransport({ listen: undefined, peer: { hostname: "127.0.0.1", port: 7788 }, log: silentLogger });
  transports.push(transport);
  const remotes: { host: string; port: number }[] = [];
  transport.attach({ connected: (_connection, _dialled, remote) => void remotes.push(remote), dialFailed() {}, data() {}, closed() {} });
  const handlers = (transport as unknown as { socketHandlers(dialled: boolean): { open(socket: unknown): void } }).socketHandlers;
  const reset = () => ({ remoteAddress: undefined, remotePort: undefined, data: undefined, setNoDelay() {}, terminate() {} });
  handlers.call(transport, true).open(reset());
  handlers.call(transport, false).open(reset());
  expect(remotes).toEqual([
    { host: "127.0.0.1", port: 7788 },
    { host: "unknown", port: 0 },
  ]);
});

test("data in pieces (a large frame received) goes down to the layer as it is, with its FUA flag, and reads back whole", async () => {
  const pieces = new Pieces([part(3, 0, 5000), part(3, 1, 70_001), part(3, 2, 3), part(3, 3, 50_000)]);
  const offset = 12_345;
  const writes: { offset: number; source: Payload; fua: boolean }[] = [];
  class Recording extends PassThroughLayer {
    readonly kind = "recording";
    override write(at: number, source: Payload, flags?: WriteFlags): Promise<void> {
      writes.push({ offset: at, source, fua: flags?.fua === true });
      return super.write(at, source, flags);
    }
  }
  const layer = new Recording(new MemoryLayer(1 << 20));
  const storage = new BlockLayerStorage(layer);
  for (const fua of [false, true]) expect(await new Promise((resolve) => storage.write(offset, pieces, fua, resolve))).toBeNull();
  expect(writes).toEqual([
    { offset, source: pieces, fua: false },
    { offset, source: pieces, fua: true },
  ]);
  expect(writes.every((entry) => entry.source === pieces)).toBe(true);
  const back = new Uint8Array(pieces.length);
  await layer.read(offset, back);
  expect(back).toEqual(new Uint8Array(joinPayload(pieces)));
});
