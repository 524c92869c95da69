// Proves the vhost-user-blk back-end as a whole (startVhostExport and its session), driven by the
// TypeScript front-end in test/helpers/vhost-frontend.ts over a real unix socket, with guest
// memory in a memfd passed by SCM_RIGHTS and real kick/call eventfds; the volume is a MemoryLayer
// behind a GateLayer, so tests can hold requests in flight. It checks every control message and
// request type by what comes back (replies, status bytes, bytes in guest memory and in the
// volume), multiple queues, indirect descriptors, event index, the queue stop/drain and reconnect
// paths (no request lost, none answered twice), and that each malformed case ends only that
// session with a logged reason while another export keeps serving and the same export accepts
// the next front-end.
import { afterEach, beforeEach, describe, expect, test } from "bun:test";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { TandemError } from "../../src/common/errors.ts";
import { eventFdConsume, eventFdCreate, closeFd, unixListen } from "../../src/common/ffi-socket.ts";
import { createLogger } from "../../src/common/log.ts";
import { requestsInFlightPerConnectionMax, vhostStopDrainTimeoutMs } from "../../src/constants.ts";
import { BlkRequestType, BlkStatus } from "../../src/node/export/vhost/blk.ts";
import { HeaderFlag, ProtocolFeatureBit, Request, bit } from "../../src/node/export/vhost/protocol.ts";
import { startVhostExport, type VhostExport } from "../../src/node/export/vhost/server.ts";
import type { VhostQueueInfo } from "../../src/node/export/types.ts";
import { VhostTestFrontEnd, allFeatures, until, VIRTQ_DESC_F_INDIRECT, type FrontEndOptions, type TestQueue } from "../helpers/vhost-frontend.ts";
import { TestVolumes, type TestVolume } from "../helpers/vhost-volumes.ts";

const MiB = 1024 * 1024;
const volumeBytes = 64 * MiB;

let dir: string;
let logs: string[];
let volumes: TestVolumes;
let exportsStarted: VhostExport[];
let frontEnds: VhostTestFrontEnd[];

const log = () => createLogger({ level: "debug", sink: (line) => logs.push(line) });

beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), "tandem-vhost-"));
  logs = [];
  volumes = new TestVolumes();
  exportsStarted = [];
  frontEnds = [];
});

afterEach(async () => {
  for (const volume of volumes.volumes.values()) volume.gate.thaw();
  for (const frontEnd of frontEnds) frontEnd.close();
  for (const started of exportsStarted) await started.close({ drain: false });
  fs.rmSync(dir, { recursive: true, force: true });
});

async function serve(volume: string, options: { queues?: number; socket?: string } = {}): Promise<VhostExport> {
  const started = await startVhostExport({ socketPath: options.socket ?? path.join(dir, `${volume}.sock`), volume, exports: volumes, queues: options.queues ?? 1, log: log() });
  exportsStarted.push(started);
  return started;
}

function connect(started: VhostExport, options?: FrontEndOptions): VhostTestFrontEnd {
  const frontEnd = VhostTestFrontEnd.connect(started.socketPath, options);
  frontEnds.push(frontEnd);
  return frontEnd;
}

function pattern(length: number, seed: number): Uint8Array {
  const bytes = new Uint8Array(length);
  let x = seed * 2654435761;
  for (let i = 0; i < length; i++) {
    x = (x * 1103515245 + 12345) >>> 0;
    bytes[i] = x >>> 24;
  }
  return bytes;
}

/** 4 KiB writes to sectors `i * 8` with `pattern(4096, seed + i)`, all pushed to the queue at once. */
function pushWrites(fe: VhostTestFrontEnd, q: TestQueue, indexes: number[], seed: number) {
  const requests = indexes.map((i) => {
    const request = fe.blkRequest(BlkRequestType.Out, i * 8, { length: 4096, write: false });
    fe.guest.set(pattern(4096, seed + i), request.data);
    return { ...request, head: q.addChain(request.buffers) };
  });
  q.push(...requests.map((r) => r.head));
  return requests;
}

/** The back-end goes away without draining while the frozen volume holds its requests; their IO then settles, and the dead session must not publish it. */
async function dropBackEnd(started: VhostExport, fe: VhostTestFrontEnd, volume: TestVolume): Promise<void> {
  const closing = started.close({ drain: false });
  await fe.waitClosed();
  volume.gate.thaw();
  await closing;
}

/** The export comes back on `socket` and the front-end reconnects as QEMU does, handing the new back-end its in-flight region (one queue). */
async function reconnect(fe: VhostTestFrontEnd, socket: string, queueSize: number): Promise<VhostExport> {
  const second = await serve("disk", { socket });
  fe.reconnect(second.socketPath);
  await fe.negotiate();
  await fe.setMemoryTable();
  await fe.sendInflight(1, queueSize);
  return second;
}

/** A queue's state and kick count as the export's status reports them. */
function queueInfo(started: VhostExport, index = 0): VhostQueueInfo {
  const info = started.sessions()[0]?.queues?.[index];
  if (!info) throw new Error(`no session reporting queue ${index}`);
  return info;
}

/**
 * Kick and wait until the back-end has handled a kick since: it has looked at the ring after
 * everything published before this call (a pending earlier kick read now counts too, as it does).
 */
async function kickHandled(started: VhostExport, queue: { index: number; kick(): void }): Promise<void> {
  const before = queueInfo(started, queue.index).kicks;
  queue.kick();
  await until(`queue ${queue.index} to handle the kick`, () => queueInfo(started, queue.index).kicks > before);
}

function sessionEndReasons(): string[] {
  return logs.map((line) => JSON.parse(line)).filter((record) => record.msg === "session ended").map((record) => record.reason as string);
}

describe("control messages", () => {
  test("features, protocol features, queue count, owner and the config space", async () => {
    volumes.add("disk", volumeBytes);
    const started = await serve("disk", { queues: 3 });
    const fe = connect(started);
    const features = await fe.callU64(Request.GetFeatures);
    for (const wanted of [allFeatures.version1, allFeatures.indirect, allFeatures.eventIndex, allFeatures.protocol, allFeatures.flush, allFeatures.discard, allFeatures.writeZeroes, allFeatures.multipleQueues]) {
      expect(features & wanted).toBe(wanted);
    }
    expect(features & allFeatures.readOnly).toBe(0n);
    const protocol = await fe.callU64(Request.GetProtocolFeatures);
    expect(protocol).toBe(bit(ProtocolFeatureBit.multipleQueues) | bit(ProtocolFeatureBit.replyAck) | bit(ProtocolFeatureBit.config) | bit(ProtocolFeatureBit.inflightSharedMemory));
    fe.send(Request.SetProtocolFeatures, { kind: "u64", value: protocol });
    fe.send(Request.SetOwner);
    fe.send(Request.ResetOwner);
    expect(await fe.callU64(Request.GetQueueNum)).toBe(3n);

    const config = await fe.call(Request.GetConfig, { kind: "config", config: { offset: 0, sizeBytes: 60, flags: 0, payload: new Uint8Array(60) } });
    if (config.kind !== "config") throw new Error(config.kind);
    const view = new DataView(config.config.payload.buffer);
    expect(config.config.payload.length).toBe(60);
    expect(view.getBigUint64(0, true)).toBe(BigInt(volumeBytes / 512)); // capacity
    expect(view.getUint32(12, true)).toBe(254); // seg_max
    expect(view.getUint32(20, true)).toBe(512); // blk_size
    expect(view.getUint16(34, true)).toBe(3); // num_queues
    expect(view.getUint32(40, true)).toBeGreaterThan(0); // max_discard_seg
    // A read past our config space gets the spec's error answer: an empty payload.
    const outside = await fe.call(Request.GetConfig, { kind: "config", config: { offset: 250, sizeBytes: 10, flags: 0, payload: new Uint8Array(10) } });
    expect(outside.kind === "config" && outside.config.payload.length).toBe(0);
    // Nothing is writable: SET_CONFIG is refused with a non-zero ack, and the session goes on.
    const refused = await fe.call(Request.SetConfig, { kind: "config", config: { offset: 32, sizeBytes: 1, flags: 0, payload: new Uint8Array([1]) } }, { needReply: true });
    expect(refused.kind === "u64" && refused.value).not.toBe(0n);
    expect(await fe.callU64(Request.GetQueueNum)).toBe(3n);
    expect(started.sessions()).toMatchObject([{ kind: "vhost", volume: "disk", requestsInFlight: 0 }]);
  });

  test("REPLY_ACK: acks only when negotiated and asked for", async () => {
    volumes.add("disk", volumeBytes);
    const fe = connect(await serve("disk"));
    await fe.callU64(Request.GetFeatures);
    fe.send(Request.SetProtocolFeatures, { kind: "u64", value: bit(ProtocolFeatureBit.config) });
    fe.send(Request.SetOwner, { kind: "none" }, { needReply: true }); // not negotiated: no ack
    const reply = await fe.call(Request.GetQueueNum);
    expect(reply).toEqual({ kind: "u64", value: 1n });
    fe.send(Request.SetProtocolFeatures, { kind: "u64", value: bit(ProtocolFeatureBit.replyAck) });
    expect(await fe.call(Request.SetOwner, { kind: "none" }, { needReply: true })).toEqual({ kind: "u64", value: 0n });
  });

  test("SET_VRING_ENABLE 0 holds new requests in the ring; 1 serves them", async () => {
    volumes.add("disk", volumeBytes);
    const started = await serve("disk");
    const fe = connect(started);
    const [q] = await fe.setup();
    fe.send(Request.SetVringEnable, { kind: "state", index: 0, num: 0 });
    // A kick can overtake a message the back-end has not read yet; one round trip on the socket
    // makes sure the disable was handled before the request is queued (as a front-end would).
    await fe.call(Request.GetQueueNum);
    expect(queueInfo(started).state).toBe("disabled");
    const request = fe.blkRequest(BlkRequestType.In, 0, { length: 512, write: true });
    const head = q!.addChain(request.buffers);
    q!.offer(head);
    q!.publish();
    // The back-end has read the kick and looked at the ring: the request is still there.
    await kickHandled(started, q!);
    expect(started.sessions()[0]!.requestsInFlight).toBe(0);
    expect(q!.usedIndex()).toBe(0);
    fe.send(Request.SetVringEnable, { kind: "state", index: 0, num: 1 });
    const [used] = await q!.waitUsed(1);
    expect(used!.head).toBe(head);
    expect(fe.guest[request.status]).toBe(BlkStatus.Ok);
  });

  test("read-only volume: RO offered, no discard/write-zeroes, writes fail with IOERR, reads work", async () => {
    const volume = volumes.add("ro", volumeBytes, { readOnly: true });
    await volume.memory.write(0, pattern(4096, 1));
    const fe = connect(await serve("ro"));
    const [q] = await fe.setup();
    const features = await fe.callU64(Request.GetFeatures);
    expect(features & allFeatures.readOnly).toBe(allFeatures.readOnly);
    expect(features & (allFeatures.discard | allFeatures.writeZeroes)).toBe(0n);
    expect((await fe.write(q!, 0, pattern(512, 2))).status).toBe(BlkStatus.IoError);
    const read = await fe.read(q!, 0, 4096);
    expect(read.status).toBe(BlkStatus.Ok);
    expect(read.data).toEqual(pattern(4096, 1));
  });
});

describe("requests", () => {
  test("IN, OUT, FLUSH, GET_ID, DISCARD, WRITE_ZEROES and the error statuses", async () => {
    const volume = volumes.add("vm-disk-1", volumeBytes);
    const fe = connect(await serve("vm-disk-1"));
    const [q] = await fe.setup({ inflight: true });

    const data = pattern(64 * 1024, 3);
    const write = await fe.write(q!, 2048, data, { segments: 4 });
    expect(write).toMatchObject({ status: BlkStatus.Ok, usedLength: 1 });
    expect(await volumes.bytes("vm-disk-1", 2048 * 512, data.length)).toEqual(data);

    const read = await fe.read(q!, 2048, data.length, { segments: 3 });
    expect(read.status).toBe(BlkStatus.Ok);
    expect(read.usedLength).toBe(data.length + 1);
    expect(read.data).toEqual(data);

    expect((await fe.blk(q!, BlkRequestType.Flush, 0)).status).toBe(BlkStatus.Ok);
    expect(volume.memory.counters.flushes).toBe(1);

    const id = await fe.blk(q!, BlkRequestType.GetId, 0, { length: 20, write: true });
    expect(id.status).toBe(BlkStatus.Ok);
    expect(Buffer.from(id.data).toString("latin1")).toBe("vm-disk-1" + "\0".repeat(11));

    // DISCARD 64 KiB (whole memory pages are dropped) and WRITE_ZEROES with and without unmap.
    const discard = await fe.ranges(q!, BlkRequestType.Discard, [{ sector: 2048, sectors: 128 }]);
    expect(discard.status).toBe(BlkStatus.Ok);
    expect(volume.memory.counters.trims).toBe(1);
    expect(await volumes.bytes("vm-disk-1", 2048 * 512, 65536)).toEqual(new Uint8Array(65536));
    await fe.write(q!, 0, pattern(8192, 4));
    const zero = await fe.ranges(q!, BlkRequestType.WriteZeroes, [{ sector: 0, sectors: 8, flags: 1 }, { sector: 12, sectors: 2 }]);
    expect(zero.status).toBe(BlkStatus.Ok);
    const after = await volumes.bytes("vm-disk-1", 0, 8192);
    expect(after.subarray(0, 4096)).toEqual(new Uint8Array(4096));
    expect(after.subarray(4096, 6144)).toEqual(pattern(8192, 4).subarray(4096, 6144));
    expect(after.subarray(6144, 7168)).toEqual(new Uint8Array(1024));

    // Errors the guest gets as a status, without losing the session.
    expect((await fe.read(q!, volumeBytes / 512, 512)).status).toBe(BlkStatus.IoError); // past the end
    expect((await fe.read(q!, 0, 100)).status).toBe(BlkStatus.IoError); // partial sector
    expect((await fe.blk(q!, 77, 0)).status).toBe(BlkStatus.Unsupported);
    expect((await fe.ranges(q!, BlkRequestType.Discard, [{ sector: 0, sectors: 8, flags: 1 }])).status).toBe(BlkStatus.Unsupported);
    expect((await fe.read(q!, 0, 512)).status).toBe(BlkStatus.Ok);
  });

  test("multiple queues with many requests in flight on each", async () => {
    volumes.add("disk", volumeBytes);
    const fe = connect(await serve("disk", { queues: 4 }));
    const queues = await fe.setup({ queues: 4, size: 64 });
    // 16 writes in flight per queue, each to its own 8 KiB block.
    const expected = new Map<number, Uint8Array>();
    queues.forEach((queue, qi) => {
      const heads: number[] = [];
      for (let i = 0; i < 16; i++) {
        const block = qi * 16 + i;
        const data = pattern(8192, block + 100);
        expected.set(block, data);
        const request = fe.blkRequest(BlkRequestType.Out, block * 16, { length: 8192, write: false });
        fe.guest.set(data, request.data);
        heads.push(queue.addChain(request.buffers));
      }
      queue.push(...heads);
    });
    for (const queue of queues) expect((await queue.waitUsed(16)).length).toBe(16);
    for (const [block, data] of expected) expect(await volumes.bytes("disk", block * 8192, 8192)).toEqual(data);
    // And read them all back through other queues.
    for (const [block, data] of expected) expect((await fe.read(queues[(block + 1) % 4]!, block * 16, 8192)).data).toEqual(data);
  });

  test("indirect descriptors, with a request in 200 segments", async () => {
    volumes.add("disk", volumeBytes);
    const fe = connect(await serve("disk"));
    const [q] = await fe.setup({ size: 16 });
    const data = pattern(200 * 4096, 5);
    expect((await fe.write(q!, 64, data, { segments: 200, indirect: true })).status).toBe(BlkStatus.Ok);
    const read = await fe.read(q!, 64, data.length, { segments: 200, indirect: true });
    expect(read.status).toBe(BlkStatus.Ok);
    expect(read.data).toEqual(data);
    expect(await volumes.bytes("disk", 64 * 512, data.length)).toEqual(data);
  });

  test("guest memory in two regions: a buffer across the boundary is read and written whole", async () => {
    volumes.add("disk", volumeBytes);
    const fe = connect(await serve("disk"), { memoryBytes: 16 * MiB, regions: 2 });
    const [q] = await fe.setup();
    const data = pattern(8192, 6);
    const header = fe.allocate(16);
    new DataView(fe.guest.buffer, header, 16).setUint32(0, BlkRequestType.Out, true);
    const status = fe.allocate(1);
    const across = 8 * MiB - 4096;
    fe.guest.set(data, across);
    q!.push(q!.addChain([{ address: header, length: 16, write: false }, { address: across, length: 8192, write: false }, { address: status, length: 1, write: true }]));
    await q!.waitUsed(1);
    expect(fe.guest[status]).toBe(BlkStatus.Ok);
    expect(await volumes.bytes("disk", 0, 8192)).toEqual(data);
  });

  test("event index: avail_event asks for the next kick; used_event decides interrupts", async () => {
    volumes.add("disk", volumeBytes);
    const fe = connect(await serve("disk"));
    const [q] = await fe.setup();
    await fe.read(q!, 0, 512);
    await fe.read(q!, 0, 512);
    expect(q!.availableEvent()).toBe(2); // kick me when entry 2 becomes available
    q!.interrupts();
    q!.setUsedEvent(100); // interrupt only once used->idx passes 100
    await fe.read(q!, 0, 512);
    await fe.read(q!, 0, 512);
    // An interrupt goes out in the turn that publishes the completion: seen used, it would be counted.
    expect(q!.interrupts()).toBe(0);
    q!.setUsedEvent(q!.usedIndex()); // the next completion crosses it
    await fe.read(q!, 0, 512);
    await until("an interrupt", () => q!.interrupts() > 0);
  });

  test("without event index: NO_INTERRUPT in the available flags suppresses interrupts", async () => {
    volumes.add("disk", volumeBytes);
    const fe = connect(await serve("disk"));
    const offered = await fe.callU64(Request.GetFeatures);
    const [q] = await fe.setup({ features: offered & ~allFeatures.eventIndex });
    await fe.read(q!, 0, 512);
    await until("an interrupt", () => q!.interrupts() > 0);
    q!.setAvailableFlags(1);
    await fe.read(q!, 0, 512);
    // An interrupt goes out in the turn that publishes the completion: seen used, it would be counted.
    expect(q!.interrupts()).toBe(0);
  });

  test("the in-flight limit holds requests in the ring, and they all complete after", async () => {
    const volume = volumes.add("disk", volumeBytes);
    const started = await serve("disk", { queues: 2 });
    const fe = connect(started);
    const queues = await fe.setup({ queues: 2, size: 128 });
    volume.gate.freeze("test");
    for (const queue of queues) {
      const heads = Array.from({ length: 100 }, () => queue.addChain(fe.blkRequest(BlkRequestType.In, 0, { length: 512, write: true }).buffers, { indirect: true }));
      queue.push(...heads);
    }
    await until("the limit to fill", () => started.sessions()[0]!.requestsInFlight >= requestsInFlightPerConnectionMax);
    // Each queue looks at its ring once more, with requests still waiting there: none is taken.
    for (const queue of queues) await kickHandled(started, queue);
    expect(started.sessions()[0]!.requestsInFlight).toBe(requestsInFlightPerConnectionMax);
    volume.gate.thaw();
    for (const queue of queues) expect((await queue.waitUsed(100)).length).toBe(100);
  });

  test("blocking eventfds from the front-end are made non-blocking, so a full call counter cannot stall the back-end", async () => {
    volumes.add("disk", volumeBytes);
    const fe = connect(await serve("disk"));
    const [q] = await fe.setup();
    const call = eventFdCreate(0, { blocking: true });
    const nonBlocking = () => (parseInt(/flags:\s*(\d+)/.exec(fs.readFileSync(`/proc/self/fdinfo/${call}`, "utf8"))![1]!, 8) & 0o4000) !== 0;
    expect(nonBlocking()).toBe(false);
    // Counter at its maximum: a blocking write of 1 would wait until someone reads it.
    expect(await Bun.write(Bun.file(call), new Uint8Array(new BigUint64Array([0xffff_ffff_ffff_fffen]).buffer))).toBe(8);
    const ack = await fe.call(Request.SetVringCall, { kind: "vringFile", index: 0, noFd: false }, { fds: [call], needReply: true });
    expect(ack).toEqual({ kind: "u64", value: 0n });
    expect(nonBlocking()).toBe(true); // checked before any completion could block on it
    expect((await fe.read(q!, 0, 512)).status).toBe(BlkStatus.Ok);
    expect((await fe.read(q!, 0, 512)).status).toBe(BlkStatus.Ok);
    closeFd(call);
  });

  test("a memory region larger than its file ends the session instead of faulting later", async () => {
    volumes.add("disk", volumeBytes);
    const started = await serve("disk");
    const fe = connect(started);
    await fe.negotiate();
    fe.send(Request.SetMemTable, { kind: "memory", regions: [{ guestAddress: 0, sizeBytes: 32 * MiB, userAddress: 0x7f00_0000_0000, mmapOffset: 0 }] }, { fds: [fe.memoryFd] });
    await fe.waitClosed();
    expect(sessionEndReasons()[0]).toMatch(/holds 16777216 bytes, the region needs 33554432/);
    await until("the release", () => volumes.volumes.get("disk")!.releases === 1);
  });

  test("guest memory that can be shrunk under the mapping is served, with a warning", async () => {
    volumes.add("disk", volumeBytes);
    const fe = connect(await serve("disk"), { sealed: false });
    const [q] = await fe.setup();
    expect((await fe.read(q!, 0, 512)).status).toBe(BlkStatus.Ok);
    expect(logs.filter((line) => line.includes("without F_SEAL_SHRINK")).length).toBe(1);
  });

  test("SET_MEM_TABLE while running: the rings are found again in the new table", async () => {
    volumes.add("disk", volumeBytes);
    const fe = connect(await serve("disk"));
    const [q] = await fe.setup();
    expect((await fe.write(q!, 0, pattern(4096, 7))).status).toBe(BlkStatus.Ok);
    await fe.setMemoryTable();
    expect((await fe.read(q!, 0, 4096)).data).toEqual(pattern(4096, 7));
  });
});

describe("stop, restart and reconnect", () => {
  test("GET_VRING_BASE waits for the queue's requests, then reports the base; the queue restarts there", async () => {
    const volume = volumes.add("disk", volumeBytes);
    const started = await serve("disk");
    const fe = connect(started);
    const [q] = await fe.setup();
    volume.gate.freeze("test");
    const statuses: number[] = [];
    const heads = [0, 1, 2].map((i) => {
      const request = fe.blkRequest(BlkRequestType.Out, i * 8, { length: 4096, write: false });
      fe.guest.set(pattern(4096, 10 + i), request.data);
      statuses.push(request.status);
      return q!.addChain(request.buffers);
    });
    q!.push(...heads);
    await until("three requests in flight", () => started.sessions()[0]?.requestsInFlight === 3);
    fe.send(Request.GetVringBase, { kind: "state", index: 0, num: 0 });
    await expect(fe.reply(100)).rejects.toThrow(/timed out/);
    volume.gate.thaw();
    const { message } = await fe.reply();
    expect(message.body).toEqual({ kind: "state", index: 0, num: 3 });
    expect(q!.usedIndex()).toBe(3);
    expect(statuses.map((at) => fe.guest[at])).toEqual([0, 0, 0]);
    for (let i = 0; i < 3; i++) expect(await volumes.bytes("disk", i * 4096, 4096)).toEqual(pattern(4096, 10 + i));
    q!.takeUsed();
    // A stopped queue takes nothing: it has no ring to take from and no longer reads its kick
    // descriptor (the reply above came after both were dropped), so this request waits for the restart.
    expect(queueInfo(started).state).toBe("stopped");
    const pending = fe.blkRequest(BlkRequestType.In, 0, { length: 4096, write: true });
    const head = q!.addChain(pending.buffers);
    q!.push(head);
    expect(queueInfo(started).state).toBe("stopped");
    expect(started.sessions()[0]!.requestsInFlight).toBe(0);
    expect(q!.usedIndex()).toBe(3);
    await fe.startQueue(q!, 3);
    const [used] = await q!.waitUsed(1);
    expect(used!.head).toBe(head);
    expect(fe.bytes(pending.data, 4096)).toEqual(pattern(4096, 10));
  });

  test(
    "a queue stop that outlasts its drain bound leaves requests to the in-flight region; the restart resubmits them once",
    async () => {
      const volume = volumes.add("disk", volumeBytes);
      const started = await serve("disk");
      const fe = connect(started);
      const [q] = await fe.setup({ inflight: true });
      volume.gate.freeze("test");
      const requests = pushWrites(fe, q!, [0, 1], 40);
      await until("two requests in flight", () => started.sessions()[0]?.requestsInFlight === 2);
      fe.send(Request.GetVringBase, { kind: "state", index: 0, num: 0 });
      const { message } = await fe.reply(vhostStopDrainTimeoutMs + 5000);
      expect(message.body).toEqual({ kind: "state", index: 0, num: 2 });
      expect(logs.some((line) => line.includes("they stay in flight for resubmission"))).toBe(true);
      // The abandoned requests finish below but are not published by the stopped ring.
      volume.gate.thaw();
      await until("the abandoned requests to settle", () => started.sessions()[0]!.requestsInFlight === 0);
      expect(q!.usedIndex()).toBe(0);
      expect(requests.map((r) => fe.guest[r.status])).toEqual([0xff, 0xff]);
      // The restart resubmits both, exactly once, whatever base the front-end gives.
      await fe.startQueue(q!, 2);
      const used = await q!.waitUsed(2);
      expect(used.map((u) => u.head).sort((a, b) => a - b)).toEqual(requests.map((r) => r.head).sort((a, b) => a - b));
      // Once nothing is in flight, nothing more can be published: no request ran twice.
      await until("nothing in flight", () => started.sessions()[0]!.requestsInFlight === 0);
      expect(q!.takeUsed()).toEqual([]);
      expect(requests.map((r) => fe.guest[r.status])).toEqual([0, 0]);
      for (let i = 0; i < 2; i++) expect(await volumes.bytes("disk", i * 4096, 4096)).toEqual(pattern(4096, 40 + i));
    },
    vhostStopDrainTimeoutMs + 20_000,
  );

  test("reconnect after the export restarts: requests left in flight are resubmitted once, completed ones are not", async () => {
    const volume = volumes.add("disk", volumeBytes);
    const socket = path.join(dir, "disk.sock");
    const first = await serve("disk", { socket });
    const fe = connect(first);
    const [q] = await fe.setup({ inflight: true, size: 32 });
    // One write completes before the restart.
    expect((await fe.write(q!, 0, pattern(4096, 20))).status).toBe(BlkStatus.Ok);
    // Four more are in flight (held by the frozen volume) when the back-end goes away.
    volume.gate.freeze("test");
    const requests = pushWrites(fe, q!, [1, 2, 3, 4], 20);
    await until("four requests in flight", () => first.sessions()[0]?.requestsInFlight === 4);
    await dropBackEnd(first, fe, volume);
    expect(q!.usedIndex()).toBe(1);

    // The export comes back on the same socket; the front-end reconnects and, since it could not
    // ask the dead back-end, restores the base to used->idx.
    const second = await reconnect(fe, socket, 32);
    await fe.startQueue(q!, q!.usedIndex());
    const used = await q!.waitUsed(4);
    expect(q!.usedIndex()).toBe(5);
    const byNumber = (a: number, b: number) => a - b;
    expect(used.map((u) => u.head).sort(byNumber)).toEqual(requests.map((r) => r.head).sort(byNumber));
    for (const request of requests) expect(fe.guest[request.status]).toBe(BlkStatus.Ok);
    for (let i = 0; i <= 4; i++) expect(await volumes.bytes("disk", i * 4096, 4096)).toEqual(pattern(4096, 20 + i));
    expect(logs.some((line) => line.includes("resubmitting requests left in flight"))).toBe(true);
    // Nothing more arrives (once nothing is in flight, nothing can be published), and the queue carries on after them.
    await until("nothing in flight", () => second.sessions()[0]!.requestsInFlight === 0);
    expect(q!.takeUsed()).toEqual([]);
    expect((await fe.read(q!, 8, 4096)).data).toEqual(pattern(4096, 21));
  });

  test("a reconnecting front-end that starts the queue before its real call descriptor still gets an interrupt for what the resubmission completed", async () => {
    // QEMU may send SET_VRING_KICK while the queue's call descriptor is still its internal
    // (masked) notifier, and the real one only after. Requests resubmitted at the kick can complete
    // in between: their interrupt goes to the masked notifier, nobody reads it, and the guest waits
    // for completions that are already in its used ring. So every SET_VRING_CALL signals the new
    // descriptor once (a spurious interrupt is harmless: the driver finds nothing new).
    const volume = volumes.add("disk", volumeBytes);
    const socket = path.join(dir, "disk.sock");
    const first = await serve("disk", { socket });
    const fe = connect(first);
    const [q] = await fe.setup({ inflight: true, size: 32 });
    volume.gate.freeze("test");
    const requests = pushWrites(fe, q!, [1, 2], 60);
    await until("two requests in flight", () => first.sessions()[0]?.requestsInFlight === 2);
    await dropBackEnd(first, fe, volume);
    q!.interrupts(); // forget what the first back-end signalled

    const second = await reconnect(fe, socket, 32);
    const masked = eventFdCreate();
    try {
      await fe.startQueue(q!, q!.usedIndex(), { callFd: masked });
      const used = await q!.waitUsed(2);
      expect(used.map((u) => u.head).sort((a, b) => a - b)).toEqual(requests.map((r) => r.head).sort((a, b) => a - b));
      await until("nothing in flight", () => second.sessions()[0]!.requestsInFlight === 0);
      expect(q!.interrupts()).toBe(0); // so far only the masked notifier heard of them
      // The real descriptor arrives: the guest must hear of the completions now.
      fe.send(Request.SetVringCall, { kind: "vringFile", index: 0, noFd: false }, { fds: [q!.callFd] });
      await until("an interrupt on the real call descriptor", () => q!.interrupts() > 0);
      for (const request of requests) expect(fe.guest[request.status]).toBe(BlkStatus.Ok);
    } finally {
      closeFd(masked);
    }
  });

  test("close with drain completes requests in flight to the guest before disconnecting", async () => {
    const volume = volumes.add("disk", volumeBytes);
    const started = await serve("disk");
    const fe = connect(started);
    const [q] = await fe.setup();
    volume.gate.freeze("test");
    const heads = [0, 1].map(() => q!.addChain(fe.blkRequest(BlkRequestType.In, 0, { length: 512, write: true }).buffers));
    q!.push(...heads);
    await until("two requests in flight", () => started.sessions()[0]?.requestsInFlight === 2);
    const closing = started.close({ drain: true });
    volume.gate.thaw();
    await closing;
    // Completed after the drain began and published to the guest: the session stayed up for them.
    expect(q!.usedIndex()).toBe(2);
    await fe.waitClosed();
    expect(volume.releases).toBe(1);
  });

  test("revoking the handle ends the session and releases the volume; the export stays up", async () => {
    const volume = volumes.add("disk", volumeBytes);
    const started = await serve("disk");
    const fe = connect(started);
    await fe.setup();
    volume.revokers[0]!("volume deleted");
    await fe.waitClosed();
    await until("the release", () => volume.releases === 1);
    expect(sessionEndReasons()).toEqual(["volume revoked: volume deleted"]);
    expect(started.sessions()).toEqual([]);
    const again = connect(started);
    const [q] = await again.setup();
    expect((await again.read(q!, 0, 512)).status).toBe(BlkStatus.Ok);
  });

  test("sessions that come and go leave no descriptors or mappings behind", async () => {
    volumes.add("disk", volumeBytes);
    const started = await serve("disk");
    // Each descriptor with what it refers to (a socket's or an eventfd's inode is its own): one open
    // after the sessions that was not before is a leak. One that closes meanwhile (an earlier
    // test's socket going late) is not, so a count would not do. The listing's own directory
    // descriptor is left out.
    const descriptors = () => {
      const open = new Set<string>();
      for (const fd of fs.readdirSync("/proc/self/fd")) {
        let target: string;
        try {
          target = fs.readlinkSync(`/proc/self/fd/${fd}`);
        } catch {
          continue; // closed while listed (the listing's own)
        }
        if (!/^\/proc\/\d+\/fd$/.test(target)) open.add(`${fd} → ${target}`);
      }
      return open;
    };
    // Guest memory and in-flight regions are memfd mappings; anonymous ones belong to the runtime's
    // heap, which grows and shrinks on its own.
    const mappings = () => fs.readFileSync("/proc/self/maps", "utf8").split("\n").filter((line) => line.includes("memfd:")).length;
    const cycle = async (end: "close" | "malformed") => {
      const fe = VhostTestFrontEnd.connect(started.socketPath);
      const [q] = await fe.setup({ inflight: true, queues: 1 });
      expect((await fe.read(q!, 0, 4096)).status).toBe(BlkStatus.Ok);
      if (end === "malformed") {
        fe.sendRaw(new Uint8Array(12)); // version 0
        await fe.waitClosed();
      }
      fe.close();
      await until("the session to go", () => started.sessions().length === 0);
    };
    await cycle("close"); // warm up: the poller, module state
    const before = { descriptors: descriptors(), mappings: mappings() };
    for (let i = 0; i < 20; i++) await cycle(i % 2 ? "close" : "malformed");
    const opened = [...descriptors()].filter((entry) => !before.descriptors.has(entry));
    expect({ opened, mappings: mappings() }).toEqual({ opened: [], mappings: before.mappings });
    expect(volumes.volumes.get("disk")!.releases).toBe(21);
  });

  test("one front-end at a time; the export refuses a second and serves the next after the first leaves", async () => {
    volumes.add("disk", volumeBytes);
    const started = await serve("disk");
    const fe = connect(started);
    const [q] = await fe.setup();
    const intruder = connect(started);
    await intruder.waitClosed();
    expect((await fe.read(q!, 0, 512)).status).toBe(BlkStatus.Ok);
    fe.close();
    frontEnds.splice(frontEnds.indexOf(fe), 1);
    await until("the session to go", () => started.sessions().length === 0);
    const next = connect(started);
    const [q2] = await next.setup();
    expect((await next.read(q2!, 0, 512)).status).toBe(BlkStatus.Ok);
  });

  test("a stale socket file is replaced; a served one is refused; an unknown volume is refused per connection", async () => {
    volumes.add("disk", volumeBytes);
    const stale = path.join(dir, "stale.sock");
    closeFd(unixListen(stale, 1)); // a socket file nobody listens on, as a killed daemon leaves it
    const started = await serve("disk", { socket: stale });
    const fe = connect(started);
    await fe.setup();
    await expect(startVhostExport({ socketPath: stale, volume: "disk", exports: volumes, queues: 1, log: log() })).rejects.toThrow(TandemError);
    const nowhere = await serve("missing");
    const lost = connect(nowhere);
    await lost.waitClosed();
    expect(logs.some((line) => line.includes("no such volume"))).toBe(true);
    await expect(startVhostExport({ socketPath: path.join(dir, "q.sock"), volume: "disk", exports: volumes, queues: 0, log: log() })).rejects.toThrow(/queues/);
  });
});

describe("malformed input ends only that session", () => {
  const cases: [string, (fe: VhostTestFrontEnd) => Promise<void> | void, RegExp][] = [
    [
      "a descriptor outside guest memory (bad address)",
      (fe) => {
        const q = fe.queues[0]!;
        const request = fe.blkRequest(BlkRequestType.In, 0, { length: 512, write: true });
        request.buffers[1] = { address: fe.memoryBytes + 4096, length: 512, write: true };
        q.push(q.addChain(request.buffers));
      },
      /outside guest memory/,
    ],
    [
      "a descriptor loop",
      (fe) => {
        const q = fe.queues[0]!;
        const header = fe.allocate(16);
        q.writeDescriptor(q.descriptorAddress, 10, { address: header, length: 16, flags: 1, next: 11 });
        q.writeDescriptor(q.descriptorAddress, 11, { address: header, length: 16, flags: 1, next: 10 });
        q.push(10);
      },
      /loop/,
    ],
    [
      "a descriptor length running past the end of guest memory (out-of-range length)",
      (fe) => {
        const q = fe.queues[0]!;
        const request = fe.blkRequest(BlkRequestType.In, 0, { length: 512, write: true });
        request.buffers[1] = { address: fe.memoryBytes - 256, length: 512, write: true };
        q.push(q.addChain(request.buffers));
      },
      /outside guest memory/,
    ],
    [
      "an indirect table whose length is not a whole number of descriptors",
      (fe) => {
        const q = fe.queues[0]!;
        q.push(q.addRaw([{ address: fe.allocate(64), length: 40, flags: VIRTQ_DESC_F_INDIRECT, next: 0 }]));
      },
      /whole number/,
    ],
    [
      "a chain with no status byte",
      (fe) => {
        const q = fe.queues[0]!;
        q.push(q.addRaw([{ address: fe.allocate(16), length: 16, flags: 0, next: 0 }]));
      },
      /status byte/,
    ],
    [
      "an available index that runs past the queue size",
      (fe) => {
        const q = fe.queues[0]!;
        q.nextAvailable = 1000;
        q.publish();
        q.kick();
      },
      /ahead/,
    ],
    [
      "a message whose size does not fit its type (bad message size)",
      (fe) => {
        const bytes = new Uint8Array(16);
        const view = new DataView(bytes.buffer);
        view.setUint32(0, Request.SetVringNum, true);
        view.setUint32(4, HeaderFlag.Version, true);
        view.setUint32(8, 4, true);
        fe.sendRaw(bytes);
      },
      /SET_VRING_NUM carries 4 payload bytes/,
    ],
    ["a payload over the limit", (fe) => fe.sendRaw(new Uint8Array([8, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1, 0])), /payload of 65536 bytes/],
    ["an unsupported request", (fe) => fe.send(33), /unsupported request GPU_SET_SOCKET/],
    ["a queue index past the export's queues", (fe) => fe.send(Request.SetVringNum, { kind: "state", index: 5, num: 64 }), /queue 5/],
    [
      "descriptors with a message that takes none",
      (fe) => {
        const extra = eventFdCreate();
        fe.send(Request.SetOwner, { kind: "none" }, { fds: [extra] });
        closeFd(extra);
      },
      /file descriptors, expected 0/,
    ],
    ["SET_FEATURES with a feature we did not offer", (fe) => fe.send(Request.SetFeatures, { kind: "u64", value: allFeatures.version1 | (1n << 34n) }), /did not offer: 0x400000000/],
    ["a queue size that is not a power of two", (fe) => fe.send(Request.SetVringNum, { kind: "state", index: 0, num: 100 }), /power of two/],
    [
      "a kick descriptor that is not an eventfd",
      (fe) => fe.send(Request.SetVringKick, { kind: "vringFile", index: 0, noFd: false }, { fds: [fe.memoryFd] }),
      /SET_VRING_KICK passed a descriptor that is not an eventfd/,
    ],
  ];

  for (const [name, breakIt, reason] of cases) {
    test(name, async () => {
      volumes.add("a", volumeBytes);
      volumes.add("b", volumeBytes);
      const exportA = await serve("a");
      const exportB = await serve("b");
      const feA = connect(exportA);
      const feB = connect(exportB);
      const [qa] = await feA.setup();
      const [qb] = await feB.setup();
      const errorFd = eventFdCreate();
      feA.send(Request.SetVringErr, { kind: "vringFile", index: 0, noFd: false }, { fds: [errorFd] });
      await feA.call(Request.GetQueueNum); // handled before any kick below can overtake it
      expect((await feA.write(qa!, 0, pattern(4096, 30))).status).toBe(BlkStatus.Ok);

      await breakIt(feA);
      await feA.waitClosed();
      const reasons = sessionEndReasons();
      expect(reasons.length).toBe(1);
      expect(reasons[0]).toMatch(reason);
      if (/outside|loop|whole number|status byte|ahead/.test(reasons[0]!)) expect(eventFdConsume(errorFd)).toBe(1);
      closeFd(errorFd);

      // The other export carries on with the session it has.
      expect((await feB.write(qb!, 8, pattern(4096, 31))).status).toBe(BlkStatus.Ok);
      expect((await feB.read(qb!, 8, 4096)).data).toEqual(pattern(4096, 31));
      // The broken export released the volume and serves the next front-end; data written before is there.
      await until("the release", () => volumes.volumes.get("a")!.releases === 1);
      const again = connect(exportA);
      const [q2] = await again.setup();
      expect((await again.read(q2!, 0, 4096)).data).toEqual(pattern(4096, 30));
    });
  }
});
