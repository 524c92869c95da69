// Proves the NBD server's driver does what the daemon relies on, over real unix and TCP sockets
// with the test client in test/helpers/nbd-client.ts: data written through one connection reads
// back through another, sessions() reports live sessions, revocation and read-only changes act on
// open sessions, close() drains or cuts as asked and export handles are released only when IO is
// done, layer failures reach the client as error values while the connection carries on, FUA is
// honoured with write-then-flush on a layer without native FUA, a client that stops reading
// cannot make the server lose or reorder replies, and the listening socket is created safely.
import { afterEach, describe, expect, test } from "bun:test";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { copyOfPayload, joinPayload, type Payload, Pieces } from "../../src/common/bytes.ts";
import { silentLogger } from "../../src/common/log.ts";
import { type BlockLayer, PassThroughLayer, type WriteFlags } from "../../src/node/block/layer.ts";
import { MemoryLayer } from "../../src/node/block/memory.ts";
import { startNbdServer } from "../../src/node/export/nbd/server.ts";
import { ClientFlag, Command, CommandFlag, ErrorValue, Option, TransmissionFlag } from "../../src/node/export/nbd/protocol.ts";
import { encodeClientFlags, encodeInfoRequest, encodeOptionRequest, encodeRequest } from "../../src/node/export/nbd/codec.ts";
import { NbdClient, NbdReplyError, RawConnection } from "../helpers/nbd-client.ts";
import { TestExports } from "../helpers/nbd-exports.ts";
import { ControlledLayer } from "../helpers/nbd-layers.ts";
import { until } from "../helpers/until.ts";

const MiB = 1024 * 1024;
const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

function pattern(length: number, seed: number): Uint8Array<ArrayBuffer> {
  const bytes = new Uint8Array(length);
  let state = seed >>> 0 || 1;
  for (let index = 0; index < length; index++) {
    state = (state * 1103515245 + 12345) >>> 0;
    bytes[index] = state >>> 24;
  }
  return bytes;
}

async function serve(volumes: Record<string, { layer: BlockLayer; readOnly?: boolean }>, tcp = false, options: { memoryBudgetBytes?: number; stallTimeoutMs?: number } = {}) {
  const directory = fs.mkdtempSync(path.join(os.tmpdir(), "tandem-nbd-server-"));
  const exports = new TestExports();
  for (const [name, volume] of Object.entries(volumes)) exports.add(name, volume.layer, { readOnly: volume.readOnly });
  const unixPath = path.join(directory, "nbd.sock");
  const server = await startNbdServer({ unixPath, exports, log: silentLogger, tcp: tcp ? { hostname: "127.0.0.1", port: 0 } : undefined, ...options });
  cleanups.push(async () => {
    await server.close();
    fs.rmSync(directory, { recursive: true, force: true });
  });
  return { server, exports, unixPath, directory, address: { unix: unixPath } };
}

function errorOf(promise: Promise<unknown>): Promise<unknown> {
  return promise.then(
    () => new Error("expected a rejection"),
    (error) => error,
  );
}


/** Keeps every buffer a write hands it, with a copy of what it held then (the mirror keeps stable buffers uncopied). */
class KeepingLayer extends PassThroughLayer {
  readonly kind = "keeping";
  readonly kept: { payload: Payload; then: Uint8Array; stable: boolean }[] = [];
  override write(offset: number, source: Payload, flags?: WriteFlags): Promise<void> {
    this.kept.push({ payload: source, then: copyOfPayload(source), stable: flags?.stable === true });
    return super.write(offset, source, flags);
  }
}

describe("NBD server", () => {
  test("a write's payload is handed to the layer as stable, and a kept buffer never changes after its write completed", async () => {
    const layer = new KeepingLayer(new MemoryLayer(16 * MiB));
    const { address } = await serve({ vol0: { layer } });
    const client = await NbdClient.connect(address);
    // Small writes (views of received chunks), large ones (in pieces: views of the chunks they
    // span), many of them in flight, then reads that fill buffers of their own.
    for (let round = 0; round < 4; round++) {
      const writes = Array.from({ length: 48 }, (_, index) => {
        const length = index % 6 === 0 ? 512 * 1024 : 4096 * (1 + (index % 3));
        return client.write((index * 640 * 1024) % (15 * MiB), pattern(length, round * 100 + index + 1));
      });
      await Promise.all(writes);
      await Promise.all(Array.from({ length: 16 }, (_, index) => client.read(index * 8192, 64 * 1024)));
    }
    expect(layer.kept.length).toBe(4 * 48);
    expect(layer.kept.every((write) => write.stable)).toBe(true);
    const changed = layer.kept.filter((write) => !Buffer.from(joinPayload(write.payload)).equals(Buffer.from(write.then)));
    expect(changed.length).toBe(0);
    expect(layer.kept.some((write) => write.payload instanceof Pieces)).toBe(true);
    await client.disconnect();
  }, 60_000);

  test("writes through one connection read back through another; FLUSH reaches the layer", async () => {
    const layer = new ControlledLayer(new MemoryLayer(16 * MiB));
    const { address } = await serve({ vol0: { layer } });
    const writer = await NbdClient.connect(address);
    const reader = await NbdClient.connect(address, { structured: false });
    expect(writer.transmissionFlags & TransmissionFlag.CanMultiConnection).toBeTruthy();
    const data = pattern(3 * MiB, 7);
    await Promise.all([writer.write(MiB, data.subarray(0, 2 * MiB)), writer.write(3 * MiB, data.subarray(2 * MiB))]);
    await writer.flush();
    expect(layer.count("flush")).toBe(1);
    expect(await reader.read(MiB, 3 * MiB)).toEqual(data);
    expect(await writer.read(MiB + 512, 4096)).toEqual(data.subarray(512, 4608));
    await writer.disconnect();
    await reader.disconnect();
  }, 30_000);

  test("replies leave in completion order: a slow read does not hold up a later fast one", async () => {
    const layer = new ControlledLayer(new MemoryLayer(MiB));
    const { address } = await serve({ vol0: { layer } });
    const client = await NbdClient.connect(address);
    await client.write(0, pattern(8192, 12));
    layer.hold();
    const order: string[] = [];
    const slow = client.read(0, 4096).then((data) => (order.push("slow"), data));
    await layer.waitHeld(1);
    layer.stopHolding();
    const fast = client.read(4096, 4096).then((data) => (order.push("fast"), data));
    expect(await fast).toEqual(pattern(8192, 12).subarray(4096));
    expect(order).toEqual(["fast"]);
    layer.releaseHeld();
    expect(await slow).toEqual(pattern(8192, 12).subarray(0, 4096));
    expect(order).toEqual(["fast", "slow"]);
  }, 30_000);

  test("NBD_OPT_EXPORT_NAME sessions serve IO with simple replies", async () => {
    const layer = new MemoryLayer(MiB);
    const { address } = await serve({ vol0: { layer } });
    for (const noZeroes of [true, false]) {
      const client = await NbdClient.connect(address, { exportName: true, structured: false, noZeroes });
      expect(client.sizeBytes).toBe(MiB);
      await client.write(4096, pattern(4096, 13));
      expect(await client.read(4096, 4096)).toEqual(pattern(4096, 13));
      await client.disconnect();
    }
  }, 30_000);

  test("sessions() lists sessions in transmission with their volume and requests in flight", async () => {
    const layer = new ControlledLayer(new MemoryLayer(MiB));
    const { server, address } = await serve({ vol0: { layer } });
    expect(server.sessions()).toEqual([]);
    const client = await NbdClient.connect(address);
    const negotiating = await RawConnection.open(address);
    await negotiating.read(18);
    layer.hold();
    const reads = [client.read(0, 4096), client.read(4096, 4096)];
    await layer.waitHeld(2);
    const sessions = server.sessions();
    expect(sessions.length).toBe(1);
    expect(sessions[0]).toMatchObject({ kind: "nbd", volume: "vol0", requestsInFlight: 2, client: expect.stringContaining("unix") });
    layer.releaseHeld();
    await Promise.all(reads);
    expect(server.sessions()[0]!.requestsInFlight).toBe(0);
    negotiating.terminate();
    await client.disconnect();
    await until("session list to empty", () => server.sessions().length === 0);
  }, 30_000);

  test("revoking a volume closes its sessions after their IO, releases the handle, and leaves other volumes serving", async () => {
    const doomed = new ControlledLayer(new MemoryLayer(MiB));
    const kept = new MemoryLayer(MiB);
    const { exports, address } = await serve({ vol0: { layer: doomed }, vol1: { layer: kept } });
    const victim = await NbdClient.connect(address, { name: "vol0" });
    const bystander = await NbdClient.connect(address, { name: "vol1" });
    expect(exports.held("vol0")).toBe(1);
    doomed.hold();
    const inFlight = victim.write(0, pattern(4096, 1));
    await doomed.waitHeld(1);
    exports.revoke("vol0", "volume deleted");
    const late = victim.write(4096, pattern(4096, 2));
    await expect(late).rejects.toMatchObject({ error: ErrorValue.Shutdown });
    expect(exports.held("vol0")).toBe(1); // the write is still in the layer
    doomed.releaseHeld();
    await inFlight; // answered before the close
    await victim.connection.closed;
    await until("vol0 handle release", () => exports.held("vol0") === 0);
    await bystander.write(0, pattern(512, 3));
    expect(await bystander.read(0, 512)).toEqual(pattern(512, 3));
  }, 30_000);

  test("a volume that turns read-only refuses writes with EPERM and keeps its bytes", async () => {
    const layer = new MemoryLayer(MiB);
    const { exports, address } = await serve({ vol0: { layer } });
    const client = await NbdClient.connect(address);
    await client.write(0, pattern(4096, 9));
    exports.setReadOnly("vol0", true);
    await expect(client.write(0, pattern(4096, 10))).rejects.toMatchObject({ error: ErrorValue.Permission });
    await expect(client.zero(0, 4096)).rejects.toMatchObject({ error: ErrorValue.Permission });
    await expect(client.trim(0, 4096)).rejects.toMatchObject({ error: ErrorValue.Permission });
    expect(await client.read(0, 4096)).toEqual(pattern(4096, 9));
    const fresh = await NbdClient.connect(address);
    expect(fresh.transmissionFlags & TransmissionFlag.ReadOnly).toBeTruthy();
  }, 30_000);

  test("close with drain answers requests in flight before closing; then every handle is released", async () => {
    const layer = new ControlledLayer(new MemoryLayer(MiB));
    const { server, exports, address } = await serve({ vol0: { layer } });
    const client = await NbdClient.connect(address);
    layer.hold();
    const write = client.write(0, pattern(8192, 4));
    await layer.waitHeld(1);
    const closing = server.close({ drain: true });
    layer.releaseHeld();
    await write; // answered after the drain began: the connection stayed open for it
    await closing;
    await client.connection.closed;
    expect(exports.held("vol0")).toBe(0);
    expect(fs.existsSync(server.unixPath!)).toBe(false);
    expect(await layer.read(0, new Uint8Array(8192)).then(() => true)).toBe(true);
  }, 30_000);

  test("close without drain cuts connections at once; the handle is released when the IO finishes", async () => {
    const layer = new ControlledLayer(new MemoryLayer(MiB));
    const { server, exports, address } = await serve({ vol0: { layer } });
    const client = await NbdClient.connect(address);
    layer.hold();
    const write = client.write(0, pattern(4096, 5));
    await layer.waitHeld(1);
    await server.close({ drain: false });
    await expect(write).rejects.toThrow();
    expect(exports.held("vol0")).toBe(1);
    layer.releaseHeld();
    await until("handle release after IO", () => exports.held("vol0") === 0);
    await expect(RawConnection.open(address)).rejects.toThrow();
  }, 30_000);

  test("a second close without drain cuts what a drain is still waiting for", async () => {
    const layer = new ControlledLayer(new MemoryLayer(MiB));
    const { server, address } = await serve({ vol0: { layer } });
    const client = await NbdClient.connect(address);
    layer.hold();
    void client.write(0, pattern(4096, 5)).catch(() => {});
    await layer.waitHeld(1);
    let drained = false;
    const draining = server.close({ drain: true }).then(() => (drained = true));
    await server.close({ drain: false });
    await client.connection.closed;
    // Cut, yet the drain still waits for the write the layer holds.
    expect(drained).toBe(false);
    layer.releaseHeld();
    await draining;
  }, 30_000);

  test("layer failures reach the client as error values and the connection carries on", async () => {
    const layer = new ControlledLayer(new MemoryLayer(MiB));
    const { address } = await serve({ vol0: { layer } });
    const structured = await NbdClient.connect(address);
    const simple = await NbdClient.connect(address, { structured: false });
    layer.failWith("EIO");
    const error = await structured.read(0, 4096).catch((caught) => caught);
    expect(error).toBeInstanceOf(NbdReplyError);
    expect(error.error).toBe(ErrorValue.InputOutput);
    expect(error.message).toContain("read failed: EIO");
    // (Caught by hand: bun test's expect().rejects reports the layer's rejection as unhandled
    // for the microtask it takes an async function to adopt it.)
    expect(await errorOf(simple.write(0, pattern(512, 1)))).toMatchObject({ error: ErrorValue.InputOutput });
    layer.failWith("ENOSPC");
    expect(await errorOf(structured.write(0, pattern(512, 1)))).toMatchObject({ error: ErrorValue.NoSpace });
    layer.failWith(undefined);
    await structured.write(0, pattern(512, 2));
    expect(await simple.read(0, 512)).toEqual(pattern(512, 2));
  }, 30_000);

  test("FUA without native FUA is write then flush; a layer that cannot flush is never flushed", async () => {
    const noFua = new ControlledLayer(new MemoryLayer(MiB), { fua: false });
    const noFlush = new ControlledLayer(new MemoryLayer(MiB), { fua: false, flush: false });
    const { address } = await serve({ a: { layer: noFua }, b: { layer: noFlush } });
    const a = await NbdClient.connect(address, { name: "a" });
    await a.write(0, pattern(4096, 1), CommandFlag.Fua);
    expect(noFua.calls.map((call) => [call.op, call.fua ?? false])).toEqual([
      ["write", false],
      ["flush", false],
    ]);
    await a.zero(0, 4096, CommandFlag.Fua);
    await a.trim(0, 4096, CommandFlag.Fua);
    expect(noFua.calls.slice(2).map((call) => [call.op, call.fua ?? false])).toEqual([
      ["zero", false],
      ["flush", false],
      ["trim", false],
      ["flush", false],
    ]);
    const b = await NbdClient.connect(address, { name: "b" });
    expect(b.transmissionFlags & TransmissionFlag.SendFlush).toBe(0);
    expect(b.transmissionFlags & TransmissionFlag.SendFua).toBeTruthy();
    await b.write(0, pattern(4096, 1), CommandFlag.Fua);
    await expect(b.flush()).rejects.toMatchObject({ error: ErrorValue.Invalid });
    expect(noFlush.count("flush")).toBe(0);
  }, 30_000);

  test("a client that pipelines large reads without reading replies gets every reply, in full, once it reads", async () => {
    const layer = new ControlledLayer(new MemoryLayer(64 * MiB));
    const { server, address } = await serve({ vol0: { layer } });
    const writer = await NbdClient.connect(address);
    const data = pattern(8 * MiB, 11);
    await writer.write(0, data);
    const writerSession = server.sessions()[0]!.id;
    const raw = await NbdClient.connect(address, { structured: false });
    raw.connection.pause();
    const count = 160; // 160 MiB of replies: far more than the socket buffers hold
    const replies = Array.from({ length: count }, (_, index) => raw.read((index % 8) * MiB, MiB));
    // The server stopped reading requests while its replies could not leave.
    const session = await until("the server to pause the reader's input", () => server.sessions().find((s) => s.id !== writerSession && s.inputPaused));
    expect(session.requestsInFlight).toBeLessThan(count);
    expect(layer.count("read")).toBeLessThan(count);
    raw.connection.resume();
    const results = await Promise.all(replies);
    results.forEach((result, index) => expect(Buffer.compare(result, data.subarray((index % 8) * MiB, (index % 8 + 1) * MiB))).toBe(0));
    expect(layer.count("read")).toBe(count);
    expect(server.sessions().length).toBe(2);
  }, 30_000);

  test("clients that hang up while their replies are blocked are noticed and their exports released", async () => {
    const layer = new MemoryLayer(8 * MiB);
    const { server, exports, address } = await serve({ vol0: { layer } });
    // Each client negotiates, asks for several 1 MiB reads and hangs up at once, or after a
    // moment, or after reading the negotiation: the server's replies back up, it pauses input,
    // and a paused Bun socket does not see a hang-up by itself. The pause probe must.
    for (let round = 0; round < 90; round++) {
      const connection = await RawConnection.open(address);
      const parts = [
        encodeClientFlags({ flags: ClientFlag.FixedNewstyle | ClientFlag.NoZeroes }),
        encodeOptionRequest({ option: Option.StructuredReply, data: new Uint8Array(0) }),
        encodeOptionRequest({ option: Option.Go, data: encodeInfoRequest({ name: "vol0", requests: [] }) }),
      ];
      for (let index = 0; index < 1 + (round % 12); index++) parts.push(encodeRequest({ flags: 0, type: Command.Read, cookie: BigInt(index + 1), offset: 0, length: MiB }));
      connection.send(new Uint8Array(Buffer.concat(parts)));
      if (round % 3 === 1) await Bun.sleep(0);
      if (round % 3 === 2) await connection.read(18 + 20 * 3);
      connection.terminate();
    }
    await until("release of every dead client's export", () => exports.held("vol0") === 0, 10_000);
    expect(server.sessions()).toEqual([]);
  }, 30_000);

  test("clients that stopped reading are closed, longest stalled first, only while others wait for the memory they hold", async () => {
    const layer = new MemoryLayer(128 * MiB);
    const stallTimeoutMs = 300;
    // 72 MiB budget: 54 MiB grantable; shares of at most 32 MiB.
    const { server, address } = await serve({ vol0: { layer } }, false, { memoryBudgetBytes: 72 * MiB, stallTimeoutMs });
    const stuck = async () => {
      const connection = await RawConnection.open(address);
      connection.pause();
      const parts = [
        encodeClientFlags({ flags: ClientFlag.FixedNewstyle | ClientFlag.NoZeroes }),
        encodeOptionRequest({ option: Option.Go, data: encodeInfoRequest({ name: "vol0", requests: [] }) }),
      ];
      for (let index = 0; index < 64; index++) parts.push(encodeRequest({ flags: 0, type: Command.Read, cookie: BigInt(index + 1), offset: index * MiB, length: MiB }));
      connection.send(new Uint8Array(Buffer.concat(parts)));
      return connection;
    };
    const first = await stuck();
    await until("the first to hold its share", () => server.memory().usedBytes >= 30 * MiB);
    const firstSession = server.sessions()[0]!.id;
    // The second finds the budget spent and waits for room: after the stall timeout the first,
    // which has held its memory without reading a reply, is closed, and the second gets its share.
    const second = await stuck();
    await until("the longest stalled client to be closed", () => server.sessions().length === 1 && server.sessions()[0]!.id !== firstSession);
    // A third client's 16 MiB WRITE fits beside the second: nobody waits for room, so the second,
    // though it reads nothing either, is left alone.
    const client = await NbdClient.connect(address);
    await client.write(0, pattern(16 * MiB, 4));
    expect(await client.read(0, 4096)).toEqual(pattern(4096, 4));
    expect(server.sessions().length).toBe(2);
    expect(server.memory().waitingConnections).toBe(0);
    first.terminate();
    second.terminate();
    await client.disconnect();
    await until("all memory back", () => server.memory().usedBytes === 0);
  }, 30_000);

  test("TCP on port 0 reports the bound address and serves the same exports", async () => {
    const { server } = await serve({ vol0: { layer: new MemoryLayer(MiB) } }, true);
    expect(server.tcpAddress).toMatch(/^127\.0\.0\.1:\d+$/);
    const port = Number(server.tcpAddress!.split(":")[1]);
    expect(port).toBeGreaterThan(0);
    const client = await NbdClient.connect({ hostname: "127.0.0.1", port });
    await client.write(0, pattern(512, 6));
    expect(await client.read(0, 512)).toEqual(pattern(512, 6));
    expect(server.sessions()[0]!.client).toContain("tcp 127.0.0.1:");
  }, 30_000);

  test("the unix socket is mode 0660, replaces a stale socket, and refuses a live one or a regular file", async () => {
    const { unixPath, directory, server } = await serve({ vol0: { layer: new MemoryLayer(MiB) } });
    expect(fs.statSync(unixPath).mode & 0o777).toBe(0o660);
    await expect(startNbdServer({ unixPath, exports: new TestExports(), log: silentLogger })).rejects.toMatchObject({ code: "in_use" });
    const regular = path.join(directory, "file");
    fs.writeFileSync(regular, "keep me");
    await expect(startNbdServer({ unixPath: regular, exports: new TestExports(), log: silentLogger })).rejects.toMatchObject({ code: "already_exists" });
    expect(fs.readFileSync(regular, "utf8")).toBe("keep me");
    // A socket file left by a dead server.
    const stalePath = path.join(directory, "stale.sock");
    const stale = Bun.listen({ unix: stalePath, socket: { data() {} } });
    stale.stop(true);
    if (!fs.existsSync(stalePath)) {
      // Bun removed it on stop; make a dead socket file the way a crash leaves one.
      const python = Bun.spawnSync(["/usr/bin/python3", "-c", `import socket; s=socket.socket(socket.AF_UNIX); s.bind(${JSON.stringify(stalePath)})`]);
      expect(python.exitCode).toBe(0);
    }
    expect(fs.lstatSync(stalePath).isSocket()).toBe(true);
    const second = await startNbdServer({ unixPath: stalePath, exports: new TestExports(), log: silentLogger });
    const connection = await RawConnection.open({ unix: stalePath });
    expect((await connection.read(18))!.length).toBe(18);
    connection.terminate();
    await second.close();
    await server.close();
  }, 30_000);

  test("a request stream cut mid-request leaves the server serving others; the handle is released", async () => {
    const layer = new ControlledLayer(new MemoryLayer(MiB));
    const { server, exports, address } = await serve({ vol0: { layer } });
    const before = pattern(4096, 9);
    await layer.write(0, before);
    const other = await NbdClient.connect(address);
    const cut = await NbdClient.connect(address);
    expect(exports.held("vol0")).toBe(2);
    // A WRITE whose payload stops after 100 of its 4096 bytes, then the connection is cut.
    cut.connection.send(encodeRequest({ flags: 0, type: Command.Write, cookie: 1n, offset: 0, length: 4096 }, new Uint8Array(100).fill(0xee)));
    // Its header was accepted once the payload's memory is taken from the budget (or, were the
    // partial payload written, once that write reached the layer).
    await until("the WRITE header to be accepted", () => server.memory().usedBytes >= 4096 || layer.count("write") > 1);
    cut.terminate();
    await until("release of the cut session", () => exports.held("vol0") === 1);
    await other.write(8192, pattern(4096, 8));
    expect(await other.read(8192, 4096)).toEqual(pattern(4096, 8));
    // The partial write never reached the volume: no write at 0 went down, and its bytes are the old ones.
    expect(layer.calls.filter((call) => call.op === "write" && call.offset === 0)).toEqual([{ op: "write", offset: 0, length: 4096, fua: undefined }]);
    expect(await other.read(0, 4096)).toEqual(before);
  }, 30_000);
});
