// Proves the NBD server's resources are bounded per node, against the real daemon (`tandem node
// run` with nbd.memoryBudget = 128M: 96 MiB grantable to connections) and real sockets, while measuring what an operator would: the
// daemon's RSS (VmRSS in /proc/PID/status, sampled every 50 ms against the level before the
// scenario) and the control API's latency (GET /status, sampled alongside; `tandem status` itself
// is run at the end of each scenario).
//  - 8 clients each queue 2,000 READs of 32 MiB and hang up: the work stops at once (bytes read
//    from storage stay a small bound instead of 8 x 62.5 GiB), RSS stays within the budget,
//    status answers within 1 s throughout, and every byte of the budget comes back;
//  - 20 clients queue 32 MiB READs and never read a reply: RSS stays within the budget and
//    another client's maximal writes and reads keep being served, checked byte for byte;
//  - 300 idle connections (more than the limit of 256): a real client connects and works at
//    once, because idle handshakes make room; one that is serving is never evicted;
//  - a client that never negotiated block sizes writes unaligned bytes into blocks that aligned
//    writers rewrite at the same time (page-cache and O_DIRECT volumes): every writer's bytes
//    survive, so the read-modify-write below is atomic against the others;
//  - nbd-tester-client's oversize test (READs of 1 MiB + 14 at odd offsets from an EXPORT_NAME
//    client, each reply followed by its data) is answered in full instead of hanging;
//  - in the two-node lab, the primary's replication link stays up and its status answers within
//    1 s while its NBD export takes the first two floods at once and a client keeps writing
//    32 MiB through the mirror (the link's keepalive and status share the event loop and the IO
//    thread pool with NBD).
// Sizes are the (2,000 x 32 MiB, 20 clients, 300 connections); the volumes are sparse, so
// the READs cost page-cache copies, not disk, on a machine shared with other work.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import fs from "node:fs";
import { encodeClientFlags, encodeInfoRequest, encodeOptionRequest, encodeRequest } from "../../src/node/export/nbd/codec.ts";
import { ClientFlag, Command, Info, Option } from "../../src/node/export/nbd/protocol.ts";
import { nbdPausedProbeIntervalMs } from "../../src/constants.ts";
import os from "node:os";
import path from "node:path";
import { eventually } from "../helpers/until.ts";
import { apiPrefix } from "../../src/node/control/http.ts";
import { runCli, TestDaemon } from "../helpers/daemon.ts";
import { NbdClient, RawConnection } from "../helpers/nbd-client.ts";

const MiB = 1024 * 1024;
/**
 * Small enough that the bounds show, large enough that 20 stuck READ streams (2 MiB each) leave a
 * maximal 32 MiB write room in the 96 MiB connections may hold.
 */
const budgetBytes = 128 * MiB;
/** The close of a client whose replies are backed up is noticed within a probe interval; a second one is slack for a loaded machine. */
const closeNoticedMs = 2 * nbdPausedProbeIntervalMs + 3_000;
const statusAnswerMsMax = 1_000;

let daemon: TestDaemon;

beforeAll(async () => {
  daemon = await TestDaemon.start({ config: { nbd: { socket: "nbd.sock", memoryBudget: "128M" }, log: { level: "info" } } });
});
afterAll(async () => {
  await daemon?.cleanup();
});

/** Poll an observable condition of the daemon until it holds, with a deadline. */
const until = (what: string, check: () => Promise<boolean>, timeoutMs: number) => eventually(what, check, timeoutMs, 20);

function rssBytes(): number {
  const status = fs.readFileSync(`/proc/${daemon.pid}/status`, "utf8");
  return Number(/VmRSS:\s+(\d+) kB/.exec(status)![1]) * 1024;
}

interface StatusJson {
  volumes: { name: string; io: { readBytes: number; writeBytes: number } }[];
  exports: { kind: string; connections?: number; memory?: { budgetBytes: number; grantableBytes: number; usedBytes: number; waitingConnections: number } }[];
  sessions: { volume: string; requestsInFlight: number }[];
}

const status = () => daemon.api<StatusJson>("GET", "/status");
const nbdExport = (body: StatusJson) => body.exports.find((entry) => entry.kind === "nbd")!;

/** Samples RSS and the control API's latency until stopped; the scenario runs meanwhile. */
function sampler() {
  const baseline = rssBytes();
  let peak = baseline;
  let statusMsMax = 0;
  let samples = 0;
  let running = true;
  const loop = (async () => {
    while (running) {
      peak = Math.max(peak, rssBytes());
      const started = performance.now();
      await status();
      statusMsMax = Math.max(statusMsMax, performance.now() - started);
      samples++;
      await Bun.sleep(50); // the sampling period, not a synchronisation
    }
  })().catch((error) => {
    statusMsMax = Infinity; // the daemon stopped answering
    console.log("sampling failed:", error);
  });
  return {
    async stop() {
      running = false;
      await loop;
      peak = Math.max(peak, rssBytes());
      const result = { baselineMiB: baseline / MiB, peakMiB: peak / MiB, growthMiB: (peak - baseline) / MiB, statusMsMax, samples };
      console.log("measured:", JSON.stringify(result, (_, value) => (typeof value === "number" ? Math.round(value * 10) / 10 : value)));
      return result;
    },
  };
}

function pattern(length: number, seed: number): Uint8Array {
  const bytes = new Uint8Array(length);
  let state = seed >>> 0 || 1;
  for (let index = 0; index < length; index++) {
    state = (state * 1103515245 + 12345) >>> 0;
    bytes[index] = state >>> 24;
  }
  return bytes;
}

/** A raw client: negotiation (GO without block sizes, simple replies) and `count` READs, in one send. */
async function queueReads(volume: string, count: number, length: number, spanBytes: number): Promise<RawConnection> {
  const connection = await RawConnection.open({ unix: daemon.nbdSocket });
  const parts = [encodeClientFlags({ flags: ClientFlag.FixedNewstyle | ClientFlag.NoZeroes }), encodeOptionRequest({ option: Option.Go, data: encodeInfoRequest({ name: volume, requests: [] }) })];
  for (let index = 0; index < count; index++) {
    parts.push(encodeRequest({ flags: 0, type: Command.Read, cookie: BigInt(index + 1), offset: (index * length) % (spanBytes - length + 1), length }));
  }
  connection.send(new Uint8Array(Buffer.concat(parts)));
  return connection;
}

async function memoryComesBack(): Promise<void> {
  await until("every byte of the NBD budget given back", async () => nbdExport(await status()).memory!.usedBytes === 0, closeNoticedMs);
}

describe("NBD resources are bounded per node (real daemon, budget 128 MiB)", () => {
  test("8 clients queue 2,000 x 32 MiB READs and hang up: the reading stops, RSS stays in budget, status answers", async () => {
    await daemon.cliJson(["volume", "create", "flood", "--size", "256M"]);
    const readBefore = (await status()).volumes.find((volume) => volume.name === "flood")!.io.readBytes;
    const measure = sampler();
    const clients = await Promise.all(Array.from({ length: 8 }, () => queueReads("flood", 2000, 32 * MiB, 256 * MiB)));
    // Each hangs up once its first reply has begun: its reads are running and 2,000 are queued.
    await Promise.all(clients.map((client) => client.read(18 + 1)));
    for (const client of clients) client.terminate();
    await until("the hung-up sessions to end", async () => (await status()).sessions.filter((session) => session.volume === "flood").length === 0, closeNoticedMs);
    await memoryComesBack();
    const measured = await measure.stop();
    const readBytes = (await status()).volumes.find((volume) => volume.name === "flood")!.io.readBytes - readBefore;
    console.log("read from storage after the hang-ups:", readBytes / MiB, "MiB of", (8 * 2000 * 32 * MiB) / MiB, "MiB queued");
    expect(readBytes).toBeLessThanOrEqual(budgetBytes + 8 * 32 * MiB);
    expect(measured.growthMiB * MiB).toBeLessThanOrEqual(budgetBytes);
    expect(measured.statusMsMax).toBeLessThan(statusAnswerMsMax);
    const cli = await daemon.cliJson<StatusJson>(["status"]);
    expect(nbdExport(cli).memory).toEqual({ budgetBytes, grantableBytes: budgetBytes * 0.75, usedBytes: 0, waitingConnections: 0 });
  }, 120_000);

  test("20 clients never read their replies: RSS stays in budget and another client's maximal writes and reads are served", async () => {
    await daemon.cliJson(["volume", "create", "stuck", "--size", "256M"]);
    // Made before measuring: the samples time the daemon, not this process building 128 MiB of patterns.
    const payloads = Array.from({ length: 4 }, (_, round) => pattern(32 * MiB, round + 1));
    const measure = sampler();
    const stuck: RawConnection[] = [];
    for (let index = 0; index < 20; index++) {
      const connection = await queueReads("stuck", 200, 32 * MiB, 256 * MiB);
      connection.pause();
      stuck.push(connection);
    }
    await until(
      "all 20 sessions open and their READs begun",
      async () => {
        const body = await status();
        const sessions = body.sessions.filter((session) => session.volume === "stuck").length;
        return sessions === 20 && body.volumes.find((volume) => volume.name === "stuck")!.io.readBytes >= 20 * MiB;
      },
      10_000,
    );
    const client = await NbdClient.connect({ unix: daemon.nbdSocket }, { name: "stuck" });
    const latencies: number[] = [];
    for (let round = 0; round < 4; round++) {
      const data = payloads[round]!;
      const started = performance.now();
      await client.write(round * 32 * MiB, data);
      const back = await client.read(round * 32 * MiB, 32 * MiB);
      await client.write(200 * MiB + round * 4096, data.subarray(0, 4096));
      expect(Buffer.compare(await client.read(200 * MiB + round * 4096, 4096), data.subarray(0, 4096))).toBe(0);
      latencies.push(performance.now() - started);
      expect(Buffer.compare(back, data)).toBe(0);
    }
    const during = nbdExport(await status()).memory;
    const measured = await measure.stop();
    console.log("served client rounds (32 MiB write + read + 4 KiB write + read), ms:", latencies.map(Math.round), "budget in use:", (during?.usedBytes ?? NaN) / MiB, "MiB");
    expect(measured.growthMiB * MiB).toBeLessThanOrEqual(budgetBytes);
    expect(measured.statusMsMax).toBeLessThan(statusAnswerMsMax);
    expect(during!.usedBytes).toBeLessThanOrEqual(during!.grantableBytes);
    await client.disconnect();
    for (const connection of stuck) connection.terminate();
    await memoryComesBack();
  }, 120_000);

  test("300 idle connections: a real client still connects and works at once; a serving one is never evicted", async () => {
    await daemon.cliJson(["volume", "create", "idle", "--size", "16M"]);
    const idle: RawConnection[] = [];
    for (let index = 0; index < 300; index++) idle.push(await RawConnection.open({ unix: daemon.nbdSocket }));
    await until("the connection count to settle at the limit", async () => nbdExport(await status()).connections === 256, 10_000);
    const started = performance.now();
    const client = await NbdClient.connect({ unix: daemon.nbdSocket }, { name: "idle" });
    await client.write(0, pattern(4096, 7));
    expect(Buffer.compare(await client.read(0, 4096), pattern(4096, 7))).toBe(0);
    const connectAndWorkMs = performance.now() - started;
    console.log("a real client among 300 idle connections connected, wrote and read back in", Math.round(connectAndWorkMs), "ms");
    expect(connectAndWorkMs).toBeLessThan(statusAnswerMsMax);
    // More idle connections evict other idle handshakes, never the serving session.
    for (let index = 0; index < 50; index++) idle.push(await RawConnection.open({ unix: daemon.nbdSocket }));
    await client.write(4096, pattern(4096, 8));
    expect(Buffer.compare(await client.read(4096, 4096), pattern(4096, 8))).toBe(0);
    expect(daemon.logRecords().some((record) => record.msg === "closing an idle NBD handshake to make room")).toBe(true);
    await client.disconnect();
    for (const connection of idle) connection.terminate();
  }, 120_000);

  for (const direct of [false, true]) {
    test(`unaligned writes of a client that never negotiated block sizes survive aligned writers in the same blocks (${direct ? "O_DIRECT" : "page cache"})`, async () => {
      const volume = direct ? "rmw-direct" : "rmw";
      await daemon.cliJson(["volume", "create", volume, "--size", "4M", ...(direct ? ["--direct"] : [])]);
      const address = { unix: daemon.nbdSocket };
      const old = await NbdClient.connect(address, { name: volume, exportName: true, structured: false });
      const [sectors, tail] = await Promise.all([NbdClient.connect(address, { name: volume }), NbdClient.connect(address, { name: volume })]);
      const blocks = 64;
      const block = 4096;
      // In every 4 KiB block: the old client owns bytes 7..306 (inside the first sector), one
      // aligned writer sectors 1-3, the other sectors 4-7. Nobody else writes those bytes, so each
      // must hold its owner's last pattern, whatever the interleaving.
      const regions = {
        old: { start: 7, length: 300, client: old },
        sectors: { start: 512, length: 1536, client: sectors },
        tail: { start: 2048, length: 2048, client: tail },
      };
      const seedOf = (round: number, index: number, owner: number) => round * 100_000 + index * 10 + owner;
      const rounds = 24;
      for (let round = 0; round < rounds; round++) {
        await Promise.all(
          Object.values(regions).map(async (region, owner) => {
            const writes = [];
            for (let index = 0; index < blocks; index++) writes.push(region.client.write(index * block + region.start, pattern(region.length, seedOf(round, index, owner))));
            await Promise.all(writes);
            if (region.client !== old) return;
            // The old client reads back what it wrote while the others keep writing around it.
            for (let index = 0; index < blocks; index++) {
              const back = await old.read(index * block + region.start, region.length);
              expect(Buffer.compare(back, pattern(region.length, seedOf(round, index, owner)))).toBe(0);
            }
          }),
        );
      }
      const whole = await sectors.read(0, blocks * block);
      Object.values(regions).forEach((region, owner) => {
        for (let index = 0; index < blocks; index++) {
          const at = index * block + region.start;
          const want = pattern(region.length, seedOf(rounds - 1, index, owner));
          if (Buffer.compare(whole.subarray(at, at + region.length), want) !== 0) throw new Error(`block ${index}: the bytes at ${region.start}+${region.length} are not their writer's last`);
        }
      });
      for (let index = 0; index < blocks; index++) {
        expect(whole.subarray(index * block, index * block + 7).every((byte) => byte === 0)).toBe(true);
        expect(whole.subarray(index * block + 307, index * block + 512).every((byte) => byte === 0)).toBe(true);
      }
      await Promise.all([old.disconnect(), sectors.disconnect(), tail.disconnect()]);
    }, 120_000);
  }

  test("nbd-tester-client's oversize test: READs of 1 MiB + 14 at odd offsets from an EXPORT_NAME client are answered with their data", async () => {
    await daemon.cliJson(["volume", "create", "tester", "--size", "8M"]);
    const contents = pattern(4 * MiB, 3);
    const writer = await NbdClient.connect({ unix: daemon.nbdSocket }, { name: "tester" });
    await writer.write(0, contents);
    await writer.disconnect();
    // The tester's requests, as it sends them: one at a time, each reply's data read in full.
    const connection = await RawConnection.open({ unix: daemon.nbdSocket });
    await connection.read(18);
    connection.send(encodeClientFlags({ flags: ClientFlag.FixedNewstyle }));
    connection.send(encodeOptionRequest({ option: Option.ExportName, data: new TextEncoder().encode("tester") }));
    await connection.read(8 + 2 + 124);
    const requests = [
      { offset: 0, length: MiB },
      { offset: 1, length: MiB + 14 },
      { offset: 2, length: 2 * (MiB + 14) },
    ];
    for (const [index, request] of requests.entries()) {
      connection.send(encodeRequest({ flags: 0, type: Command.Read, cookie: BigInt(index), offset: request.offset, length: request.length }));
      const header = (await connection.read(16))!;
      expect(new DataView(header.buffer).getUint32(4)).toBe(0); // no error
      const data = (await connection.read(request.length))!;
      expect(Buffer.compare(data, contents.subarray(request.offset, request.offset + request.length))).toBe(0);
    }
    connection.terminate();
    // And a GO that asked for block sizes is still held to them.
    const strict = await NbdClient.connect({ unix: daemon.nbdSocket }, { name: "tester" });
    expect(strict.blockSize?.minimumBytes).toBe(512);
    expect(strict.infos.some((info) => info.type === Info.BlockSize)).toBe(true);
    await expect(strict.read(1, MiB + 14)).rejects.toMatchObject({ error: 22 });
    await strict.disconnect();
  }, 60_000);
});

describe("the replication link and the control API beside a flooded NBD export (two-node lab)", () => {
  test("the link stays up and status answers within 1 s through hang-up floods, stuck readers and mirrored 32 MiB writes", async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "tandem-nbd-lab-"));
    const up = await runCli(["lab", "up", "--dir", dir, "--json"], { timeoutMs: 90_000 });
    if (up.code !== 0) throw new Error(`lab up failed: ${up.stdout}${up.stderr}`);
    const lab = JSON.parse(up.stdout) as { nodes: { control: string; nbd: string }[]; volumes: { name: string }[] };
    const primary = lab.nodes[0]!;
    const volume = lab.volumes[0]!.name;
    const connections: RawConnection[] = [];
    const linkState = async () => ((await (await fetch(`http://tandem${apiPrefix}/status`, { unix: primary.control })).json()) as { node: { link: { state: string } | null } }).node.link?.state ?? "none";
    await until("the replication link to be up", async () => (await linkState()) === "up", 30_000);
    let sampling = true;
    let statusMsMax = 0;
    const linkStates = new Set<string>();
    const sampler = (async () => {
      while (sampling) {
        const started = performance.now();
        linkStates.add(await linkState());
        statusMsMax = Math.max(statusMsMax, performance.now() - started);
        await Bun.sleep(50); // the sampling period, not a synchronisation
      }
    })();
    try {
      const open = async (count: number) => {
        const connection = await RawConnection.open({ unix: primary.nbd });
        const parts = [encodeClientFlags({ flags: ClientFlag.FixedNewstyle | ClientFlag.NoZeroes }), encodeOptionRequest({ option: Option.Go, data: encodeInfoRequest({ name: volume, requests: [] }) })];
        for (let index = 0; index < count; index++) parts.push(encodeRequest({ flags: 0, type: Command.Read, cookie: BigInt(index + 1), offset: (index % 7) * 32 * MiB, length: 32 * MiB }));
        connection.send(new Uint8Array(Buffer.concat(parts)));
        connections.push(connection);
        return connection;
      };
      for (let index = 0; index < 8; index++) {
        const flood = await open(2000);
        await flood.read(18 + 1);
        flood.terminate();
      }
      for (let index = 0; index < 20; index++) (await open(200)).pause();
      const client = await NbdClient.connect({ unix: primary.nbd }, { name: volume });
      const data = pattern(32 * MiB, 11);
      for (let round = 0; round < 6; round++) {
        await client.write((round % 4) * 32 * MiB, data);
        expect(Buffer.compare(await client.read((round % 4) * 32 * MiB, 32 * MiB), data)).toBe(0);
      }
      await client.disconnect();
    } finally {
      sampling = false;
      await sampler;
      for (const connection of connections) connection.terminate();
      await runCli(["lab", "down", "--dir", dir]);
      fs.rmSync(dir, { recursive: true, force: true });
    }
    console.log("lab: status max", Math.round(statusMsMax), "ms; link states seen", [...linkStates]);
    expect([...linkStates]).toEqual(["up"]);
    expect(statusMsMax).toBeLessThan(statusAnswerMsMax);
  }, 180_000);
});
