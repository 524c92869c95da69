// Resync benchmark on the two-node lab with its link relay (the relay is what lets the benchmark cut
// and heal the link; the steady-state mirrored figures are bench/replica.ts's, on a direct link):
//  1. Resync: the volume (1 GiB by default) is filled, the link cut, every other MiB rewritten
//     (50% dirty), the link healed, and the time to "synced" on both nodes measured. Compared with
//     a plain copy of the same number of bytes from a file over a TCP connection through the same
//     kind of relay into a file (page cache both ends). Target: resync >= 70% of the copy's rate.
//  2. The resync again with fio (4k random writes, QD32) running on the primary during it, against
//     the same fio on the synced volume. Target: >= 50% of the IOPS.
//
//   bun bench/resync.ts [--size 1G] [--resync-rate 4G] [--dir DIR] [--json FILE]
// The resync time is taken from node a's log: from `resyncStarted` to `synced` (so the reconnect
// backoff after the heal is not counted); the lab's nodes run with peer.resyncRate = --resync-rate.
// Not a test: it prints what it measured and exits 0 unless something fails to run.
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { parseArgs } from "node:util";
import { parseSize } from "../src/common/size.ts";
import { runCli } from "../test/helpers/daemon.ts";
import { LinkRelay } from "../src/node/lab/relay.ts";

const MiB = 1024 * 1024;

// Helper modes: this file is also the copy receiver and the relay process of part 2.
if (process.argv[2] === "--receive") {
  // --receive PORT FILE BYTES: accept one connection, write BYTES into FILE, answer the count.
  const [port, file, expected] = [Number(process.argv[3]), process.argv[4]!, Number(process.argv[5])];
  const out = fs.openSync(file, "w");
  let received = 0;
  const server = net.createServer((socket) => {
    socket.on("data", (chunk: Buffer) => {
      fs.writeSync(out, chunk);
      received += chunk.length;
      if (received >= expected) {
        fs.closeSync(out);
        socket.write(`${received}\n`, () => server.close());
      }
    });
  });
  server.listen(port, "127.0.0.1", () => process.stdout.write("ready\n"));
  await new Promise((resolve) => server.on("close", resolve));
  process.exit(0);
}
if (process.argv[2] === "--relay") {
  // --relay LISTEN TARGET: the lab's relay code, forwarding one port to another.
  const relay = LinkRelay.start({ listen: { hostname: "127.0.0.1", port: Number(process.argv[3]) }, target: { hostname: "127.0.0.1", port: Number(process.argv[4]) } });
  process.stdout.write(`ready ${relay.port}\n`);
  await new Promise(() => {});
}

const { values } = parseArgs({
  options: {
    size: { type: "string", default: "1G" },
    dir: { type: "string", default: path.join(os.tmpdir(), "tandem-resync-bench") },
    json: { type: "string" },
    "resync-rate": { type: "string", default: "4G" },
  },
});
const sizeBytes = parseSize(values.size!);
const dir = values.dir!;
fs.rmSync(dir, { recursive: true, force: true });
fs.mkdirSync(dir, { recursive: true });

const log = (line: string) => process.stderr.write(`${new Date().toISOString().slice(11, 19)} ${line}\n`);

async function run(command: string[], options: { timeoutMs?: number; env?: Record<string, string> } = {}): Promise<{ code: number; stdout: string; stderr: string }> {
  const child = Bun.spawn(command, { stdout: "pipe", stderr: "pipe", cwd: dir, env: { ...process.env, ...options.env } });
  const timer = setTimeout(() => child.kill("SIGKILL"), options.timeoutMs ?? 600_000);
  const [stdout, stderr, code] = await Promise.all([new Response(child.stdout).text(), new Response(child.stderr).text(), child.exited]);
  clearTimeout(timer);
  return { code, stdout, stderr };
}

async function tandem(args: string[]): Promise<string> {
  const result = await runCli(args, { timeoutMs: 120_000, cwd: dir });
  if (result.code !== 0) throw new Error(`tandem ${args.join(" ")} exited ${result.code}: ${result.stderr}`);
  return result.stdout;
}

// ---------------------------------------------------------------- the lab and a standalone node
const labDir = path.join(dir, "lab");
log(`lab up in ${labDir}`);
await tandem(["lab", "up", "--dir", labDir, "--json"]);
// Uncap the resync (the default 200 MiB/s cap would decide the comparison with a plain copy); client
// IO keeps priority through the resync window either way, which part 3 measures.
await tandem(["lab", "down", "--dir", labDir]);
for (const node of ["a", "b"]) {
  const file = path.join(labDir, node, "config.json");
  const config = JSON.parse(fs.readFileSync(file, "utf8"));
  config.peer.resyncRate = values["resync-rate"];
  fs.writeFileSync(file, JSON.stringify(config, null, 2));
}
const lab = JSON.parse(await tandem(["lab", "up", "--dir", labDir, "--json"])) as { nodes: { name: string; control: string; nbd: string }[] };
const nodeA = lab.nodes.find((node) => node.name === "a")!;
const nodeB = lab.nodes.find((node) => node.name === "b")!;
const helpers: { kill(signal?: number | NodeJS.Signals): void }[] = [];

async function shutdown(): Promise<void> {
  for (const helper of helpers) helper.kill("SIGTERM");
  await runCli(["lab", "down", "--dir", labDir], { timeoutMs: 60_000, cwd: dir });
}

try {
  const volumeSize = String(sizeBytes);
  await tandem(["volume", "create", "bench", "--size", volumeSize, "--socket", nodeA.control]);
  const benchVolumeId = (JSON.parse(await tandem(["volume", "list", "--json", "--socket", nodeA.control])) as { volumes: { name: string; id: number }[] }).volumes.find((volume) => volume.name === "bench")!.id;
  const uris = { mirrored: `nbd+unix:///bench?socket=${nodeA.nbd}` };

  const volumeStates = async (control: string) => {
    const listed = JSON.parse(await tandem(["volume", "list", "--json", "--socket", control])) as { volumes: { name: string; nodes: { state: string; detail?: { progress?: string } }[] }[] };
    return listed.volumes.find((volume) => volume.name === "bench")!.nodes;
  };
  const waitSynced = async (timeoutMs: number, onProgress?: (line: string) => void): Promise<number> => {
    const started = performance.now();
    let lastProgress = "";
    while (performance.now() - started < timeoutMs) {
      const [a, b] = [await volumeStates(nodeA.control), await volumeStates(nodeB.control)];
      if ([...a, ...b].every((replica) => replica.state === "synced")) return performance.now() - started;
      const progress = a.map((replica) => replica.detail?.progress).find(Boolean);
      if (progress && progress !== lastProgress && onProgress) onProgress((lastProgress = progress));
      await Bun.sleep(50);
    }
    throw new Error(`not synced within ${timeoutMs} ms`);
  };

  interface FioSide {
    iops: number;
    meanUs: number;
    p50Us: number;
    bytes: number;
  }
  const fio = async (uri: string, args: string[]): Promise<FioSide> => {
    const result = await run(["fio", "--name=bench", "--ioengine=nbd", `--uri=${uri}`, "--output-format=json", ...args]);
    if (result.code !== 0) throw new Error(`fio failed: ${result.stderr}`);
    const job = JSON.parse(result.stdout.slice(result.stdout.indexOf("{"))).jobs[0];
    const side = job.write.io_bytes > 0 ? job.write : job.read;
    return { iops: side.iops, meanUs: side.lat_ns.mean / 1000, p50Us: (side.clat_ns.percentile?.["50.000000"] ?? 0) / 1000, bytes: side.io_bytes };
  };

  // Fill the volume so writes land on allocated blocks and the resync has real data to move.
  log(`filling both volumes (${values.size})`);
  for (const uri of Object.values(uris)) await fio(uri, ["--rw=write", "--bs=1M", "--iodepth=8", `--size=${sizeBytes}`, "--refill_buffers"]);
  await waitSynced(300_000);

  const workloads = { qd32: ["--rw=randwrite", "--bs=4k", "--iodepth=32"] };

  // ------------------------------------------------------------ 1. resync vs plain copy
  const dirtyBytes = sizeBytes / 2;
  const resyncOnce = async (withFio: boolean): Promise<{ resyncMs: number; fio?: FioSide }> => {
    await tandem(["lab", "cut", "--dir", labDir]);
    // Every other MiB: half the volume dirty, spread over all of it.
    await fio(uris.mirrored, ["--rw=write:1M", "--bs=1M", "--iodepth=8", `--size=${sizeBytes}`, "--refill_buffers"]);
    await tandem(["lab", "heal", "--dir", labDir]);
    let fioResult: Promise<FioSide> | undefined;
    if (withFio) fioResult = fio(uris.mirrored, [...workloads.qd32, `--size=${sizeBytes}`, "--time_based", `--runtime=${Math.max(2, Math.floor(resyncAlone.resyncMs / 1000 / 2))}`, "--randrepeat=0"]);
    let progressLines = 0;
    await waitSynced(600_000, (line) => {
      if (progressLines++ % 10 === 0) log(`resync: ${line}`);
    });
    // From a's log: the last resyncStarted and the synced report after it.
    const records = fs
      .readFileSync(path.join(labDir, "a", "node.log"), "utf8")
      .split("\n")
      .filter((line) => line.startsWith("{"))
      .map((line) => JSON.parse(line) as { time: string; msg: string; volumeId?: number });
    // The bench volume's records only: the lab's demo volume reports its own (instant) sync.
    const startIndex = records.findLastIndex((record) => record.msg === "resyncStarted" && record.volumeId === benchVolumeId);
    const end = records.slice(startIndex).find((record) => record.msg === "synced" && record.volumeId === benchVolumeId);
    if (startIndex < 0 || !end) throw new Error("no resyncStarted/synced pair in a's log");
    const resyncMs = Date.parse(end.time) - Date.parse(records[startIndex]!.time);
    return { resyncMs, fio: fioResult ? await fioResult : undefined };
  };
  log("resync of 50% dirty, alone");
  let resyncAlone = { resyncMs: 0 } as { resyncMs: number };
  resyncAlone = await resyncOnce(false);

  log("plain copy of the same bytes over a relay");
  const source = path.join(dir, "copy-source.img");
  await run(["fio", "--name=src", `--filename=${source}`, "--rw=write", "--bs=1M", `--size=${dirtyBytes}`, "--refill_buffers", "--output=/dev/null"]);
  await run(["cat", source], { timeoutMs: 120_000 }); // into the page cache, as the volume's data is
  const receiverPort = 20000 + Math.floor(Math.random() * 20000);
  const receiver = Bun.spawn([process.execPath, import.meta.path, "--receive", String(receiverPort), path.join(dir, "copy-target.img"), String(dirtyBytes)], { stdout: "pipe", stderr: "inherit" });
  helpers.push(receiver);
  await readLine(receiver.stdout);
  const copyRelay = Bun.spawn([process.execPath, import.meta.path, "--relay", "0", String(receiverPort)], { stdout: "pipe", stderr: "inherit" });
  helpers.push(copyRelay);
  const copyRelayPort = Number((await readLine(copyRelay.stdout)).split(" ")[1]);
  const started = performance.now();
  const copied = await copyFile(source, copyRelayPort);
  const copyMs = performance.now() - started;
  copyRelay.kill("SIGTERM");
  if (copied !== dirtyBytes) throw new Error(`copy moved ${copied} bytes, expected ${dirtyBytes}`);

  log("resync of 50% dirty with fio running on the primary");
  const baseline = await fio(uris.mirrored, [...workloads.qd32, `--size=${sizeBytes}`, "--time_based", `--runtime=${Math.max(2, Math.floor(resyncAlone.resyncMs / 1000 / 2))}`, "--randrepeat=0"]);
  const during = await resyncOnce(true);

  // ------------------------------------------------------------ report
  const resyncRate = dirtyBytes / MiB / (resyncAlone.resyncMs / 1000);
  const copyRate = dirtyBytes / MiB / (copyMs / 1000);
  const duringRatio = during.fio!.iops / baseline.iops;
  const rows = [
    `Resync on the lab (loopback through the link relay), ${values.size} volume`,
    "",
    "| resync | value | target |",
    "| --- | ---: | --- |",
    `| ${(dirtyBytes / MiB).toFixed(0)} MiB dirty (every other MiB of ${values.size}), link healed → both synced | ${(resyncAlone.resyncMs / 1000).toFixed(2)} s, ${resyncRate.toFixed(1)} MiB/s | |`,
    `| plain copy of ${(dirtyBytes / MiB).toFixed(0)} MiB file → relay → file | ${(copyMs / 1000).toFixed(2)} s, ${copyRate.toFixed(1)} MiB/s | |`,
    `| resync rate / copy rate | ${(resyncRate / copyRate).toFixed(2)} | ≥ 0.7: ${resyncRate / copyRate >= 0.7 ? "met" : "missed"} |`,
    `| fio 4k randwrite QD32 during resync / synced | ${Math.round(during.fio!.iops)} / ${Math.round(baseline.iops)} IOPS = ${duringRatio.toFixed(2)} (resync took ${(during.resyncMs / 1000).toFixed(2)} s with fio running) | ≥ 0.5: ${duringRatio >= 0.5 ? "met" : "missed"} |`,
  ];
  console.log(rows.join("\n"));
  if (values.json) fs.writeFileSync(values.json, JSON.stringify({ resyncAlone, copyMs, dirtyBytes, baseline, during }, null, 1));
} finally {
  await shutdown();
}

async function readLine(stream: ReadableStream<Uint8Array>): Promise<string> {
  const reader = stream.getReader();
  let text = "";
  while (!text.includes("\n")) {
    const { value, done } = await reader.read();
    if (done) break;
    text += new TextDecoder().decode(value);
  }
  reader.releaseLock();
  return text.trim();
}

/** Send a file over TCP to `port`; resolves with the byte count the receiver reports. */
function copyFile(file: string, port: number): Promise<number> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, "127.0.0.1");
    let reply = "";
    socket.on("error", reject);
    socket.on("connect", () => fs.createReadStream(file, { highWaterMark: MiB }).pipe(socket, { end: false }));
    socket.on("data", (chunk: Buffer) => {
      reply += chunk.toString();
      if (reply.includes("\n")) {
        socket.destroy();
        resolve(Number(reply.trim()));
      }
    });
  });
}
