// Mirroring benchmark, in one run on the two-node lab (nodes a and b over loopback through the
// lab's link relay), with fio's nbd engine on each node's NBD unix socket:
//  1. 4k random writes at iodepth 1 and 32 through a mirrored volume (the lab's primary, a), and
//     through an unmirrored volume of a standalone node running the same binary on the same
//     machine; runs interleaved. The floor is measured too: one page-cache 4k pwrite (no
//     fdatasync) plus one 4 KiB loopback TCP round trip through a relay like the lab's.
//     Targets: mirrored QD1 latency <= 1.3x (unmirrored latency + one round trip); mirrored QD32
//     IOPS >= 0.6x unmirrored. The cost of frame authentication, as an A/B in the same run: the
//     mirrored cells again with both lab nodes restarted in the benchmark mode that runs the link
//     with untagged frames (docs/security.md), rounds alternating which mode goes first. Budget:
//     tagged QD32 IOPS >= 0.9x untagged. On a shared machine the IOPS move with everyone else's
//     load, so the CPU the two nodes spend per mirrored write (from /proc, user + system, during
//     each mirrored run) is compared too: it does not count time spent waiting for a core. And the
//     CPU time of the tags themselves (process CPU time, not wall clock) for one write's frames: a
//     4 KiB Write and its WriteAck, each tagged once and checked once.
//  2. Resync: the volume (1 GiB by default) is filled, the link cut, every other MiB rewritten
//     (50% dirty), the link healed, and the time to "synced" on both nodes measured. Compared with
//     a plain copy of the same number of bytes from a file over a TCP connection through the same
//     kind of relay into a file (page cache both ends). Target: resync >= 70% of the copy's rate.
//  3. The resync again with fio (4k random writes, QD32) running on the primary during it, against
//     the same fio on the synced volume. Target: >= 50% of the IOPS.
//
//   bun bench/replica.ts [--size 1G] [--runtime 10] [--runs 3] [--resync-rate 4G] [--dir DIR] [--json FILE]
// The resync time is taken from node a's log: from `resyncStarted` to `synced` (so the reconnect
// backoff after the heal is not counted); the lab's nodes run with peer.resyncRate = --resync-rate.
// Not a test: it prints what it measured and exits 0 unless something fails to run.
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { parseArgs } from "node:util";
import { parseSize } from "../src/common/size.ts";
import { cliEntry, runCli } from "../test/helpers/daemon.ts";
import { median } from "./stats.ts";
import { LinkRelay } from "../src/node/lab/relay.ts";
import { untaggedFramesConsent, untaggedFramesVariable } from "../src/node/replica/replication.ts";
import { frameTag } from "../src/replica/auth.ts";
import { encodeMessage, MessageType, WireStatus } from "../src/replica/wire.ts";

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
    runtime: { type: "string", default: "10" },
    runs: { type: "string", default: "3" },
    dir: { type: "string", default: path.join(os.tmpdir(), "tandem-replica-bench") },
    json: { type: "string" },
    "resync-rate": { type: "string", default: "4G" },
  },
});
const sizeBytes = parseSize(values.size!);
const runtime = Number(values.runtime);
const runs = Number(values.runs);
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
  // `status` exits 6 or 7 to say the node is degraded or has no quorum (docs/cli.md): still an answer.
  const answered = result.code === 0 || (args[0] === "status" && (result.code === 6 || result.code === 7));
  if (!answered) throw new Error(`tandem ${args.join(" ")} exited ${result.code}: ${result.stderr}`);
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
const soloDir = path.join(dir, "solo");
fs.mkdirSync(soloDir);
fs.writeFileSync(path.join(soloDir, "config.json"), JSON.stringify({ name: "solo", dataDir: "data", controlSocket: "control.sock", nbd: { socket: "nbd.sock" }, log: { level: "warn" } }));
const solo = Bun.spawn([process.execPath, cliEntry, "node", "run", "--config", path.join(soloDir, "config.json")], { cwd: soloDir, stdout: Bun.file(path.join(soloDir, "node.log")), stderr: "inherit" });
const helpers: { kill(signal?: number | NodeJS.Signals): void }[] = [solo];

async function shutdown(): Promise<void> {
  for (const helper of helpers) helper.kill("SIGTERM");
  await runCli(["lab", "down", "--dir", labDir], { timeoutMs: 60_000, cwd: dir });
}

try {
  for (let i = 0; i < 200 && !fs.existsSync(path.join(soloDir, "control.sock")); i++) await Bun.sleep(50);
  const soloSocket = ["--socket", path.join(soloDir, "control.sock")];
  const volumeSize = String(sizeBytes);
  await tandem(["volume", "create", "bench", "--size", volumeSize, "--socket", nodeA.control]);
  const benchVolumeId = (JSON.parse(await tandem(["volume", "list", "--json", "--socket", nodeA.control])) as { volumes: { name: string; id: number }[] }).volumes.find((volume) => volume.name === "bench")!.id;
  await tandem(["volume", "create", "bench", "--size", volumeSize, ...soloSocket]);
  const uris = {
    mirrored: `nbd+unix:///bench?socket=${nodeA.nbd}`,
    unmirrored: `nbd+unix:///bench?socket=${path.join(soloDir, "nbd.sock")}`,
  };

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
    /** CPU of both lab nodes (user + system) per 4 KiB write during the run; mirrored runs only. */
    nodeCpuUsPerWrite?: number;
  }
  const fio = async (uri: string, args: string[]): Promise<FioSide> => {
    const result = await run(["fio", "--name=bench", "--ioengine=nbd", `--uri=${uri}`, "--output-format=json", ...args]);
    if (result.code !== 0) throw new Error(`fio failed: ${result.stderr}`);
    const job = JSON.parse(result.stdout.slice(result.stdout.indexOf("{"))).jobs[0];
    const side = job.write.io_bytes > 0 ? job.write : job.read;
    return { iops: side.iops, meanUs: side.lat_ns.mean / 1000, p50Us: (side.clat_ns.percentile?.["50.000000"] ?? 0) / 1000, bytes: side.io_bytes };
  };

  // Fill both volumes so writes land on allocated blocks and the resync has real data to move.
  log(`filling both volumes (${values.size})`);
  for (const uri of Object.values(uris)) await fio(uri, ["--rw=write", "--bs=1M", "--iodepth=8", `--size=${sizeBytes}`, "--refill_buffers"]);
  await waitSynced(300_000);

  // ------------------------------------------------------------ 1. mirrored vs unmirrored, tagged vs untagged frames
  let started = 0;
  const samples: Record<string, FioSide[]> = {};
  const workloads = { qd1: ["--rw=randwrite", "--bs=4k", "--iodepth=1"], qd32: ["--rw=randwrite", "--bs=4k", "--iodepth=32"] };
  let frames: "tagged" | "untagged" = "tagged";
  /** Restart both lab nodes with or without the benchmark-only request for untagged frames. */
  const setFrames = async (mode: "tagged" | "untagged") => {
    if (frames === mode) return;
    log(`restarting the lab with ${mode} frames`);
    await tandem(["lab", "down", "--dir", labDir]);
    const env: Record<string, string> = mode === "untagged" ? { [untaggedFramesVariable]: untaggedFramesConsent } : {};
    const result = await runCli(["lab", "up", "--dir", labDir, "--json"], { timeoutMs: 120_000, cwd: dir, env });
    if (result.code !== 0) throw new Error(`lab up (${mode}) failed: ${result.stderr}`);
    frames = mode;
    const link = JSON.parse(await tandem(["status", "--json", "--socket", nodeA.control])) as { node: { link: { framesTagged: boolean } } };
    if (link.node.link.framesTagged !== (mode === "tagged")) throw new Error(`the lab came up with framesTagged=${link.node.link.framesTagged}, wanted ${mode}`);
    await waitSynced(120_000);
  };
  /** CPU milliseconds (user + system) the lab's two node processes have used so far. */
  const nodeCpuMs = async (): Promise<number> => {
    const status = JSON.parse(await tandem(["lab", "status", "--dir", labDir, "--json"])) as { nodes: { pid: number | null }[] };
    let ticks = 0;
    for (const node of status.nodes) {
      const fields = fs.readFileSync(`/proc/${node.pid}/stat`, "utf8").split(") ")[1]!.split(" ");
      ticks += Number(fields[11]) + Number(fields[12]); // utime and stime, fields 14 and 15 of stat
    }
    return ticks * 10; // USER_HZ is 100 on Linux
  };
  const cellRun = async (target: "mirrored" | "unmirrored" | "untagged", workload: string, args: string[], round: number) => {
    log(`${target} ${workload} run ${round}/${runs}`);
    const cpuBefore = target === "unmirrored" ? 0 : await nodeCpuMs();
    const sample = await fio(uris[target === "untagged" ? "mirrored" : target], [...args, `--size=${sizeBytes}`, "--time_based", `--runtime=${runtime}`, "--randrepeat=0"]);
    if (target !== "unmirrored") sample.nodeCpuUsPerWrite = ((await nodeCpuMs()) - cpuBefore) * 1000 / (sample.bytes / 4096);
    (samples[`${target}.${workload}`] ??= []).push(sample);
  };
  for (let round = 1; round <= runs; round++) {
    const modes = round % 2 ? (["tagged", "untagged"] as const) : (["untagged", "tagged"] as const);
    for (const mode of modes) {
      await setFrames(mode);
      for (const [workload, args] of Object.entries(workloads)) {
        if (mode === "untagged") await cellRun("untagged", workload, args, round);
        else for (const target of round % 2 ? (["mirrored", "unmirrored"] as const) : (["unmirrored", "mirrored"] as const)) await cellRun(target, workload, args, round);
      }
    }
  }
  await setFrames("tagged");
  await waitSynced(120_000);

  // The tags' own CPU time for one mirrored 4k write: its Write frame and its WriteAck, each tagged
  // by the sender and checked by the receiver (four tag computations), timed in this process.
  const tagKey = crypto.getRandomValues(new Uint8Array(32));
  const writeFrame = encodeMessage({ type: MessageType.Write, volumeId: 1, requestId: 1, offset: 0, fua: false, data: new Uint8Array(4096) });
  const ackFrame = encodeMessage({ type: MessageType.WriteAck, volumeId: 1, requestId: 1, status: WireStatus.Ok });
  const tagRounds = 20_000;
  for (let i = 0; i < 2000; i++) frameTag(tagKey, i, writeFrame);
  const cpuStart = process.cpuUsage();
  for (let i = 0; i < tagRounds; i++) {
    frameTag(tagKey, i, writeFrame);
    frameTag(tagKey, i, writeFrame);
    frameTag(tagKey, i, ackFrame);
    frameTag(tagKey, i, ackFrame);
  }
  const tagCpu = process.cpuUsage(cpuStart);
  const tagUsPerWrite = (tagCpu.user + tagCpu.system) / tagRounds;

  // The floor: a page-cache 4k pwrite, and a 4 KiB round trip on loopback through a relay.
  const floorFile = path.join(dir, "floor.img");
  fs.writeFileSync(floorFile, "");
  fs.truncateSync(floorFile, 256 * MiB);
  const fd = fs.openSync(floorFile, "r+");
  const block = new Uint8Array(4096).fill(7);
  const writes = 20_000;
  for (let i = 0; i < 2000; i++) fs.writeSync(fd, block, 0, 4096, (i % 65536) * 4096);
  started = performance.now();
  for (let i = 0; i < writes; i++) fs.writeSync(fd, block, 0, 4096, Math.floor(Math.random() * 65536) * 4096);
  const writeUs = ((performance.now() - started) * 1000) / writes;
  fs.closeSync(fd);
  const echo = net.createServer((socket) => socket.on("data", (chunk: Buffer) => socket.write(chunk.subarray(0, 1))));
  await new Promise<void>((resolve) => echo.listen(0, "127.0.0.1", resolve));
  const echoPort = (echo.address() as net.AddressInfo).port;
  const relayChild = Bun.spawn([process.execPath, import.meta.path, "--relay", "0", String(echoPort)], { stdout: "pipe", stderr: "inherit" });
  helpers.push(relayChild);
  const relayPort = Number((await readLine(relayChild.stdout)).split(" ")[1]);
  const rttUs = await roundTrips(relayPort, 4096, 5000);
  relayChild.kill("SIGTERM");
  echo.close();
  const floorUs = writeUs + rttUs;

  // ------------------------------------------------------------ 2. resync vs plain copy
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
  started = performance.now();
  const copied = await copyFile(source, copyRelayPort);
  const copyMs = performance.now() - started;
  copyRelay.kill("SIGTERM");
  if (copied !== dirtyBytes) throw new Error(`copy moved ${copied} bytes, expected ${dirtyBytes}`);

  log("resync of 50% dirty with fio running on the primary");
  const baseline = await fio(uris.mirrored, [...workloads.qd32, `--size=${sizeBytes}`, "--time_based", `--runtime=${Math.max(2, Math.floor(resyncAlone.resyncMs / 1000 / 2))}`, "--randrepeat=0"]);
  const during = await resyncOnce(true);

  // ------------------------------------------------------------ report
  const fieldValues = (key: string, field: keyof FioSide) => samples[key]!.map((sample) => sample[field] ?? NaN);
  const cell = (key: string, field: keyof FioSide) => median(fieldValues(key, field));
  const spread = (key: string, field: keyof FioSide) => `${Math.round(Math.min(...fieldValues(key, field)))}–${Math.round(Math.max(...fieldValues(key, field)))}`;
  const mirroredQd1 = cell("mirrored.qd1", "meanUs");
  const unmirroredQd1 = cell("unmirrored.qd1", "meanUs");
  const qd1Bound = unmirroredQd1 + rttUs;
  const qd32Ratio = cell("mirrored.qd32", "iops") / cell("unmirrored.qd32", "iops");
  const tagRatio = cell("mirrored.qd32", "iops") / cell("untagged.qd32", "iops");
  const resyncRate = dirtyBytes / MiB / (resyncAlone.resyncMs / 1000);
  const copyRate = dirtyBytes / MiB / (copyMs / 1000);
  const duringRatio = during.fio!.iops / baseline.iops;
  const rows = [
    `Mirroring on the lab (loopback through the link relay), ${values.size} volume, ${runs} run(s) x ${runtime}s per cell, medians (min–max)`,
    "",
    "| 4k randwrite | mirrored | unmirrored | ratio | target |",
    "| --- | ---: | ---: | ---: | --- |",
    `| QD1 mean latency µs | ${mirroredQd1.toFixed(1)} (${spread("mirrored.qd1", "meanUs")}) | ${unmirroredQd1.toFixed(1)} (${spread("unmirrored.qd1", "meanUs")}) | ${(mirroredQd1 / qd1Bound).toFixed(2)}× of unmirrored + RTT (${qd1Bound.toFixed(1)} µs) | ≤ 1.3×: ${mirroredQd1 <= 1.3 * qd1Bound ? "met" : "missed"} |`,
    `| QD1 IOPS | ${Math.round(cell("mirrored.qd1", "iops"))} | ${Math.round(cell("unmirrored.qd1", "iops"))} | ${(cell("mirrored.qd1", "iops") / cell("unmirrored.qd1", "iops")).toFixed(2)} | |`,
    `| QD32 IOPS | ${Math.round(cell("mirrored.qd32", "iops"))} (${spread("mirrored.qd32", "iops")}) | ${Math.round(cell("unmirrored.qd32", "iops"))} (${spread("unmirrored.qd32", "iops")}) | ${qd32Ratio.toFixed(2)} | ≥ 0.6×: ${qd32Ratio >= 0.6 ? "met" : "missed"} |`,
    "",
    "| 4k randwrite, mirrored | tagged frames | untagged frames | tagged / untagged | budget |",
    "| --- | ---: | ---: | ---: | --- |",
    `| QD1 mean latency µs | ${mirroredQd1.toFixed(1)} (${spread("mirrored.qd1", "meanUs")}) | ${cell("untagged.qd1", "meanUs").toFixed(1)} (${spread("untagged.qd1", "meanUs")}) | ${(mirroredQd1 / cell("untagged.qd1", "meanUs")).toFixed(3)} | |`,
    `| QD32 IOPS | ${Math.round(cell("mirrored.qd32", "iops"))} (${spread("mirrored.qd32", "iops")}) | ${Math.round(cell("untagged.qd32", "iops"))} (${spread("untagged.qd32", "iops")}) | ${tagRatio.toFixed(3)} | ≥ 0.9×: ${tagRatio >= 0.9 ? "met" : "missed"} |`,
    "",
    `| QD32 CPU of both nodes per write µs | ${cell("mirrored.qd32", "nodeCpuUsPerWrite").toFixed(1)} (${spread("mirrored.qd32", "nodeCpuUsPerWrite")}) | ${cell("untagged.qd32", "nodeCpuUsPerWrite").toFixed(1)} (${spread("untagged.qd32", "nodeCpuUsPerWrite")}) | ${(cell("mirrored.qd32", "nodeCpuUsPerWrite") / cell("untagged.qd32", "nodeCpuUsPerWrite")).toFixed(3)} | |`,
    `| QD1 CPU of both nodes per write µs | ${cell("mirrored.qd1", "nodeCpuUsPerWrite").toFixed(1)} (${spread("mirrored.qd1", "nodeCpuUsPerWrite")}) | ${cell("untagged.qd1", "nodeCpuUsPerWrite").toFixed(1)} (${spread("untagged.qd1", "nodeCpuUsPerWrite")}) | ${(cell("mirrored.qd1", "nodeCpuUsPerWrite") / cell("untagged.qd1", "nodeCpuUsPerWrite")).toFixed(3)} | |`,
    "",
    `Tags' own CPU time per mirrored 4k write (the Write and its WriteAck, each tagged and checked): ${tagUsPerWrite.toFixed(2)} µs, ${((tagUsPerWrite / cell("mirrored.qd32", "nodeCpuUsPerWrite")) * 100).toFixed(1)}% of the ${cell("mirrored.qd32", "nodeCpuUsPerWrite").toFixed(1)} µs both nodes spend per write at QD32`,
    "",
    `Floor: page-cache 4k pwrite ${writeUs.toFixed(1)} µs + 4 KiB loopback round trip through a relay ${rttUs.toFixed(1)} µs = ${floorUs.toFixed(1)} µs (mirrored QD1 is ${(mirroredQd1 / floorUs).toFixed(1)}× the floor)`,
    "",
    "| resync | value | target |",
    "| --- | ---: | --- |",
    `| ${(dirtyBytes / MiB).toFixed(0)} MiB dirty (every other MiB of ${values.size}), link healed → both synced | ${(resyncAlone.resyncMs / 1000).toFixed(2)} s, ${resyncRate.toFixed(1)} MiB/s | |`,
    `| plain copy of ${(dirtyBytes / MiB).toFixed(0)} MiB file → relay → file | ${(copyMs / 1000).toFixed(2)} s, ${copyRate.toFixed(1)} MiB/s | |`,
    `| resync rate / copy rate | ${(resyncRate / copyRate).toFixed(2)} | ≥ 0.7: ${resyncRate / copyRate >= 0.7 ? "met" : "missed"} |`,
    `| fio 4k randwrite QD32 during resync / synced | ${Math.round(during.fio!.iops)} / ${Math.round(baseline.iops)} IOPS = ${duringRatio.toFixed(2)} (resync took ${(during.resyncMs / 1000).toFixed(2)} s with fio running) | ≥ 0.5: ${duringRatio >= 0.5 ? "met" : "missed"} |`,
  ];
  console.log(rows.join("\n"));
  if (values.json) fs.writeFileSync(values.json, JSON.stringify({ samples, tagUsPerWrite, writeUs, rttUs, floorUs, resyncAlone, copyMs, dirtyBytes, baseline, during }, null, 1));
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

/** Mean round trip of `bytes` out and one byte back, `count` times in a row, in µs. */
function roundTrips(port: number, bytes: number, count: number): Promise<number> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, "127.0.0.1");
    socket.setNoDelay(true);
    const payload = Buffer.alloc(bytes, 1);
    let done = 0;
    let started = 0;
    const warmup = 200;
    socket.on("connect", () => socket.write(payload));
    socket.on("error", reject);
    socket.on("data", () => {
      done++;
      if (done === warmup) started = performance.now();
      if (done === warmup + count) {
        socket.destroy();
        resolve(((performance.now() - started) * 1000) / count);
        return;
      }
      socket.write(payload);
    });
  });
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
