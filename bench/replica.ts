// Mirrored-write benchmark: what users run, against QEMU's own synchronous mirrors, in one run.
// Every system serves one volume (1 GiB by default, page cache everywhere) over NBD on a unix socket,
// filled with random data through that export first (1 MiB sequential writes), and fio's nbd
// engine drives it:
//   tandem-mirrored    two Tandem daemons of a lab whose nodes link directly (`lab up --direct`),
//                      the volume mirrored from a to b (protocol C);
//   tandem-untagged    the same, a second lab whose nodes run the link in the benchmark mode with
//                      untagged frames (docs/security.md): the A/B of frame authentication, with
//                      its budget (tagged QD32 IOPS >= 0.9x untagged) and the tags' own CPU time
//                      for one write (its 4 KiB Write and WriteAck, each tagged and checked);
//   qemu-quorum        qemu-storage-daemon with a `quorum` node, vote-threshold 2, children a local
//                      file and an NBD client to a second qemu-storage-daemon serving the peer's file;
//                      the NBD client reaches its peer over loopback TCP, as Tandem's link does
//                      (`--anchor-link unix` gives the anchors a unix socket instead: cheaper than
//                      any link between two machines, the form of the figures before 2026-11-30's
//                      second quiet run);
//   qemu-mirror        qemu-storage-daemon serving a local file while a `blockdev-mirror
//                      copy-mode=write-blocking` job (started over QMP, waited for until ready)
//                      mirrors every write to an NBD client of a second qemu-storage-daemon;
//   tandem-unmirrored  a standalone Tandem daemon (no peer) with the same volume: the floor;
//   qemu-nbd-wb        qemu-nbd --cache=writeback on a file: QEMU's unmirrored floor;
//   bun-floor-mirrored bench/floor-server.ts: the least a Bun process can do to serve NBD and mirror
//                      every write to a peer Bun process over loopback TCP (no CRC, tags, locks,
//                      logs or metadata): what the runtime allows, and over it what Tandem adds;
//   bun-floor          the same server without a peer.
// Workloads: 4k random write at iodepth 1 (mean, p50, p99 latency) and 32 (IOPS), 4k random read
// at iodepth 1 and 32, 1 MiB sequential write at iodepth 8. Rounds rotate the order of the systems;
// each cell is the median of the rounds. For every run the CPU time (utime + stime from
// /proc/PID/stat) of every server process of the system is read before and after, and divided by
// the requests fio completed: CPU µs per request, per process. Each cell starts after a `sync`, so
// no cell pays for another's writeback. Tandem's daemons run with the environment the service unit
// gives them (daemonEnvironment), and the floor's Bun processes with its allocator setting. Kernel
// work done outside those processes (kworkers completing IO, softirqs) is not counted, for any
// system. The round trip is measured too: a 4 KiB request and a 4 KiB answer over loopback TCP
// between two processes.
// It prints the tables and the ratios against the targets of the mirrored-write issue.
//
//   bun bench/replica.ts [--size 1G] [--runtime 10] [--runs 3] [--warmup 3] [--systems a,b,...]
//                        [--workloads w4k1,...] [--anchor-link tcp|unix] [--dir DIR] [--json FILE] [--smoke]
// The full setting is the default (3 s of unmeasured warm-up per system and workload, then 3
// rounds × 10 s per cell, 1 GiB: about 17 minutes). --smoke is the CI setting (64 MiB, no warm-up,
// 1 round of 1 s: proves every system starts and every cell is measured, figures meaningless).
// Not a test: it exits 0 unless something fails to run.
// Resync figures are bench/resync.ts's (they need the lab's relay to cut the link).
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { parseArgs } from "node:util";
import { freeLoopbackPorts } from "../src/common/ports.ts";
import { parseSize } from "../src/common/size.ts";
import { daemonEnvironment } from "../src/constants.ts";
import { cliEntry, runCli } from "../test/helpers/daemon.ts";
import { median } from "./stats.ts";
import { untaggedFramesConsent, untaggedFramesVariable } from "../src/node/replica/replication.ts";
import { frameTagger } from "../src/replica/auth.ts";
import { installNativeFrameTags } from "../src/node/replica/gmac-native.ts";
import { encodeMessage, MessageType, WireStatus } from "../src/replica/wire.ts";

const MiB = 1024 * 1024;

// Helper mode: the far end of the round-trip measurement, in its own process like a peer daemon.
if (process.argv[2] === "--echo") {
  const echoAnswer = new Uint8Array(4096).fill(0x72);
  const listener = Bun.listen<{ pending: number }>({
    hostname: "127.0.0.1",
    port: 0,
    socket: {
      open(socket) {
        socket.data = { pending: 0 };
        socket.setNoDelay(true);
      },
      data(socket, chunk) {
        socket.data.pending += chunk.length;
        while (socket.data.pending >= 4096) {
          socket.data.pending -= 4096;
          socket.write(echoAnswer);
        }
      },
      close() {
        listener.stop(true);
        process.exit(0);
      },
    },
  });
  process.stdout.write(`ready ${listener.port}\n`);
  setTimeout(() => process.exit(3), 120_000).unref();
  await new Promise(() => {});
}

const systemNames = ["tandem-mirrored", "tandem-untagged", "qemu-quorum", "qemu-mirror", "tandem-unmirrored", "qemu-nbd-wb", "bun-floor-mirrored", "bun-floor"] as const;
type SystemName = (typeof systemNames)[number];
const workloadArguments = {
  w4k1: ["--rw=randwrite", "--bs=4k", "--iodepth=1"],
  w4k32: ["--rw=randwrite", "--bs=4k", "--iodepth=32"],
  r4k1: ["--rw=randread", "--bs=4k", "--iodepth=1"],
  r4k32: ["--rw=randread", "--bs=4k", "--iodepth=32"],
  sw1m: ["--rw=write", "--bs=1M", "--iodepth=8"],
} as const;
type WorkloadName = keyof typeof workloadArguments;

const { values } = parseArgs({
  options: {
    size: { type: "string" },
    runtime: { type: "string" },
    runs: { type: "string" },
    warmup: { type: "string" },
    systems: { type: "string" },
    workloads: { type: "string" },
    dir: { type: "string", default: path.join(os.tmpdir(), "tandem-replica-bench") },
    json: { type: "string" },
    smoke: { type: "boolean", default: false },
    "anchor-link": { type: "string", default: "tcp" },
  },
});
const anchorLink = values["anchor-link"];
if (anchorLink !== "tcp" && anchorLink !== "unix") throw new Error(`--anchor-link is tcp or unix, not ${anchorLink}`);
const smoke = values.smoke === true;
const sizeBytes = parseSize(values.size ?? (smoke ? "64M" : "1G"));
const runtimeSeconds = Number(values.runtime ?? (smoke ? "1" : "10"));
const rounds = Number(values.runs ?? (smoke ? "1" : "3"));
const warmupSeconds = Number(values.warmup ?? (smoke ? "0" : "3"));
const systems = (values.systems?.split(",") ?? [...systemNames]) as SystemName[];
const workloads = (values.workloads?.split(",") ?? Object.keys(workloadArguments)) as WorkloadName[];
for (const system of systems) if (!systemNames.includes(system)) throw new Error(`unknown system ${system}; known: ${systemNames.join(", ")}`);
for (const workload of workloads) if (!(workload in workloadArguments)) throw new Error(`unknown workload ${workload}; known: ${Object.keys(workloadArguments).join(", ")}`);
if (!(runtimeSeconds > 0) || !(rounds >= 1) || sizeBytes < 16 * MiB) throw new Error("--runtime and --runs must be positive, --size at least 16M");
if (!(warmupSeconds >= 0)) throw new Error("--warmup is a number of seconds, 0 for none");
const dir = path.resolve(values.dir!);
fs.rmSync(dir, { recursive: true, force: true });
fs.mkdirSync(dir, { recursive: true });

const log = (line: string) => process.stderr.write(`${new Date().toISOString().slice(11, 19)} ${line}\n`);
const clockTicksPerSecond = Number(Bun.spawnSync(["getconf", "CLK_TCK"]).stdout.toString().trim()) || 100;

interface Started {
  name: string;
  process: import("bun").Subprocess;
}
const started: Started[] = [];

/** Start a helper process we own; its output goes to DIR/NAME.log. */
function spawn(name: string, command: string[], options: { cwd?: string; env?: Record<string, string> } = {}): import("bun").Subprocess {
  const out = fs.openSync(path.join(dir, `${name}.log`), "a");
  const child = Bun.spawn(command, { cwd: options.cwd ?? dir, stdout: out, stderr: out, env: { ...process.env, ...options.env } });
  fs.closeSync(out);
  started.push({ name, process: child });
  return child;
}

async function stopAll(): Promise<void> {
  for (const { process: child } of started.splice(0).reverse()) {
    if (child.exitCode !== null || child.signalCode !== null) continue;
    child.kill("SIGTERM");
    const exited = await Promise.race([child.exited.then(() => true), Bun.sleep(20_000).then(() => false)]);
    if (!exited) child.kill("SIGKILL");
  }
}

async function run(command: string[], timeoutMs = 600_000): Promise<string> {
  const child = Bun.spawn(command, { stdout: "pipe", stderr: "pipe", cwd: dir });
  const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
  const [stdout, stderr, code] = await Promise.all([new Response(child.stdout).text(), new Response(child.stderr).text(), child.exited]);
  clearTimeout(timer);
  if (code !== 0) throw new Error(`${command.join(" ")} exited ${code}: ${stderr.trim() || stdout.trim()}`);
  return stdout;
}

async function tandem(args: string[]): Promise<string> {
  const result = await runCli(args, { timeoutMs: 120_000, cwd: dir });
  // `status` exits 6 or 7 to say the node is degraded or has no quorum (docs/cli.md): still an answer.
  const answered = result.code === 0 || (args[0] === "status" && (result.code === 6 || result.code === 7));
  if (!answered) throw new Error(`tandem ${args.join(" ")} exited ${result.code}: ${result.stderr}${result.stdout}`);
  return result.stdout;
}

async function waitFor(what: string, check: () => boolean | Promise<boolean>, timeoutMs: number, watch?: import("bun").Subprocess): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (watch && watch.exitCode !== null) throw new Error(`${what}: the process exited with ${watch.exitCode} (see its log in ${dir})`);
    if (Date.now() > deadline) throw new Error(`${what}: not within ${timeoutMs / 1000} s`);
    await Bun.sleep(50);
  }
}

const socketAnswers = (socket: string | { hostname: string; port: number }) => {
  const handlers = { data() {}, connectError() {} };
  const connecting = typeof socket === "string" ? Bun.connect({ unix: socket, socket: handlers }) : Bun.connect({ ...socket, socket: handlers });
  return connecting.then(
    (connection) => {
      connection.terminate();
      return true;
    },
    () => false,
  );
};

/** A sparse file of `sizeBytes`: every system's volume starts so, and is filled through its own export. */
function sparseFile(file: string): void {
  fs.writeFileSync(file, "");
  fs.truncateSync(file, sizeBytes);
}

/**
 * Fill a system's volume with random data through its own NBD export, as a user's first write of a
 * disk would, so that every system's files are in the page cache in the state its own writes leave
 * them: the folios the kernel makes for a write depend on its size and on who writes
 * (docs/benchmarks.md, "Page-cache folios"), and they decide what later small writes cost.
 */
async function fillThroughExport(name: string, uri: string): Promise<void> {
  log(`${name}: filling the volume through its export`);
  await fio(uri, [...workloadArguments.sw1m, `--size=${sizeBytes}`, "--refill_buffers"]);
}

/** CPU seconds (user + system, all threads) a process has used so far. */
function cpuSeconds(pid: number): number {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, "utf8");
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  // After "pid (comm) ", field 3 (state) is fields[0]; utime and stime are fields 14 and 15.
  return (Number(fields[11]) + Number(fields[12])) / clockTicksPerSecond;
}

interface System {
  name: SystemName;
  uri: string;
  /** Server processes whose CPU is charged to this system, by role. */
  processes: Record<string, number>;
}

// ---------------------------------------------------------------------------------- the systems
/** A lab with its nodes linked directly and a filled volume mirrored a → b; `untagged`: the frame-authentication A/B. */
async function startTandemLab(name: "tandem-mirrored" | "tandem-untagged"): Promise<System> {
  const labDir = path.join(dir, name);
  const untagged = name === "tandem-untagged";
  log(`${name}: lab up --direct${untagged ? " with untagged frames" : ""}`);
  const env: Record<string, string> = untagged ? { [untaggedFramesVariable]: untaggedFramesConsent } : {};
  const up = await runCli(["lab", "up", "--direct", "--dir", labDir, "--json"], { timeoutMs: 120_000, cwd: dir, env });
  if (up.code !== 0) throw new Error(`${name}: lab up exited ${up.code}: ${up.stderr}${up.stdout}`);
  // The lab's daemons are detached; `lab down` stops them (by the pids it recorded) at the end.
  labStoppers.push(() => runCli(["lab", "down", "--dir", labDir], { timeoutMs: 60_000, cwd: dir }).then(() => {}));
  const lab = JSON.parse(up.stdout) as { nodes: { name: string; control: string; nbd: string; pid: number }[] };
  const [a, b] = ["a", "b"].map((node) => lab.nodes.find((entry) => entry.name === node)!);
  const link = JSON.parse(await tandem(["status", "--json", "--socket", a!.control])) as { node: { link: { framesTagged: boolean } } };
  if (link.node.link.framesTagged === untagged) throw new Error(`${name}: the lab came up with framesTagged=${link.node.link.framesTagged}`);
  await tandem(["volume", "create", "bench", "--size", String(sizeBytes), "--socket", a!.control]);
  const uri = `nbd+unix:///bench?socket=${a!.nbd}`;
  await fillThroughExport(name, uri);
  await waitFor(`${name} synced`, () => bothSynced(a!.control, b!.control), 300_000);
  return { name, uri, processes: { "node a": a!.pid, "node b": b!.pid } };
}

const labStoppers: (() => Promise<void>)[] = [];

async function bothSynced(...controls: string[]): Promise<boolean> {
  for (const control of controls) {
    const listed = JSON.parse(await tandem(["volume", "list", "--json", "--socket", control])) as { volumes: { name: string; nodes: { state: string }[] }[] };
    const replicas = listed.volumes.find((volume) => volume.name === "bench")?.nodes ?? [];
    if (replicas.length !== 2 || replicas.some((replica) => replica.state !== "synced")) return false;
  }
  return true;
}

async function startTandemUnmirrored(): Promise<System> {
  const soloDir = path.join(dir, "solo");
  fs.mkdirSync(soloDir);
  const config = path.join(soloDir, "config.json");
  fs.writeFileSync(config, JSON.stringify({ name: "solo", dataDir: "data", controlSocket: "control.sock", nbd: { socket: "nbd.sock" }, log: { level: "warn" } }));
  log("tandem-unmirrored: a standalone node");
  // As packaging/tandem.service runs the daemon.
  const daemon = spawn("solo", [process.execPath, cliEntry, "node", "run", "--config", config], { cwd: soloDir, env: { ...daemonEnvironment } });
  const control = path.join(soloDir, "control.sock");
  await waitFor("standalone node", () => socketAnswers(control), 30_000, daemon);
  await tandem(["volume", "create", "bench", "--size", String(sizeBytes), "--socket", control]);
  const uri = `nbd+unix:///bench?socket=${path.join(soloDir, "nbd.sock")}`;
  await fillThroughExport("tandem-unmirrored", uri);
  return { name: "tandem-unmirrored", uri, processes: { node: daemon.pid } };
}

/** Where a QEMU anchor's NBD client finds its peer: a loopback TCP port (default) or a unix socket. */
type PeerAddress = { kind: "tcp"; port: number } | { kind: "unix"; socket: string };

/** A qemu-storage-daemon serving `file` as export "disk" (page cache): a peer of the QEMU anchors. */
async function startQsdPeer(name: string, file: string): Promise<{ pid: number; address: PeerAddress }> {
  const address: PeerAddress = anchorLink === "tcp" ? { kind: "tcp", port: freeLoopbackPorts(1)[0]! } : { kind: "unix", socket: path.join(dir, `${name}.sock`) };
  const peer = spawn(name, [
    "qemu-storage-daemon",
    "--blockdev", `driver=file,node-name=file0,filename=${file},cache.direct=off,aio=threads`,
    "--blockdev", "driver=raw,node-name=disk0,file=file0",
    "--nbd-server", address.kind === "tcp" ? `addr.type=inet,addr.host=127.0.0.1,addr.port=${address.port}` : `addr.type=unix,addr.path=${address.socket}`,
    "--export", "type=nbd,id=export0,node-name=disk0,name=disk,writable=on",
  ]);
  const answers = () => (address.kind === "tcp" ? socketAnswers({ hostname: "127.0.0.1", port: address.port }) : fs.existsSync(address.socket) && socketAnswers(address.socket));
  await waitFor(`${name} listening`, answers, 30_000, peer);
  return { pid: peer.pid, address };
}

/** The blockdevs both QEMU anchors share: `localNode` over the local file, `remoteNode` an NBD client of the peer. */
function anchorBlockdevs(local: string, localNode: string, peer: PeerAddress, remoteNode: string): string[] {
  const server = peer.kind === "tcp" ? `server.type=inet,server.host=127.0.0.1,server.port=${peer.port}` : `server.type=unix,server.path=${peer.socket}`;
  return [
    "--blockdev", `driver=file,node-name=localfile,filename=${local},cache.direct=off,aio=threads`,
    "--blockdev", `driver=raw,node-name=${localNode},file=localfile`,
    "--blockdev", `driver=nbd,node-name=${remoteNode},${server},export=disk`,
  ];
}

async function startQemuQuorum(): Promise<System> {
  log("qemu-quorum: files and peer");
  const local = path.join(dir, "quorum-local.img");
  const remote = path.join(dir, "quorum-peer.img");
  // Quorum compares the children's data on every read: they start identical (empty), and every
  // write of the fill goes to both.
  sparseFile(local);
  sparseFile(remote);
  const peer = await startQsdPeer("quorum-peer", remote);
  const socket = path.join(dir, "quorum.sock");
  const primary = spawn("quorum", [
    "qemu-storage-daemon",
    ...anchorBlockdevs(local, "local", peer.address, "remote"),
    "--blockdev", "driver=quorum,node-name=quorum0,vote-threshold=2,children.0=local,children.1=remote",
    "--nbd-server", `addr.type=unix,addr.path=${socket}`,
    "--export", "type=nbd,id=export0,node-name=quorum0,name=disk,writable=on",
  ]);
  await waitFor("qemu-quorum listening", () => fs.existsSync(socket) && socketAnswers(socket), 30_000, primary);
  const uri = `nbd+unix:///disk?socket=${socket}`;
  await fillThroughExport("qemu-quorum", uri);
  return { name: "qemu-quorum", uri, processes: { "qsd quorum": primary.pid, "qsd peer": peer.pid } };
}

/** Send QMP commands on a fresh connection; resolves with each command's answer, and events seen. */
async function qmp(socket: string, commands: object[], untilEvent?: string, timeoutMs = 600_000): Promise<{ answers: unknown[]; events: string[] }> {
  return new Promise((resolve, reject) => {
    let buffer = "";
    const answers: unknown[] = [];
    const events: string[] = [];
    let sent = 0;
    const timer = setTimeout(() => reject(new Error(`QMP on ${socket}: no ${untilEvent ?? "answer"} within ${timeoutMs / 1000} s`)), timeoutMs);
    void Bun.connect({
      unix: socket,
      socket: {
        data(connection, chunk) {
          buffer += new TextDecoder().decode(chunk);
          let newline: number;
          while ((newline = buffer.indexOf("\n")) >= 0) {
            const line = buffer.slice(0, newline).trim();
            buffer = buffer.slice(newline + 1);
            if (!line) continue;
            const message = JSON.parse(line) as { QMP?: unknown; return?: unknown; error?: { desc: string }; event?: string };
            if (message.event) events.push(message.event);
            if (message.error) {
              clearTimeout(timer);
              connection.end();
              return reject(new Error(`QMP ${JSON.stringify(commands[sent - 1])}: ${message.error.desc}`));
            }
            if (message.QMP || message.return !== undefined) {
              if (message.return !== undefined) answers.push(message.return);
              if (sent < commands.length) connection.write(JSON.stringify(commands[sent++]) + "\n");
            }
            const finished = sent === commands.length && answers.length === commands.length && (!untilEvent || events.includes(untilEvent));
            if (finished) {
              clearTimeout(timer);
              connection.end();
              resolve({ answers, events });
            }
          }
        },
        error(_connection, error) {
          clearTimeout(timer);
          reject(error);
        },
      },
    }).catch(reject);
  });
}

async function startQemuMirror(): Promise<System> {
  log("qemu-mirror: files and peer");
  const local = path.join(dir, "mirror-local.img");
  const remote = path.join(dir, "mirror-peer.img");
  sparseFile(local);
  sparseFile(remote);
  const peer = await startQsdPeer("mirror-peer", remote);
  const socket = path.join(dir, "mirror.sock");
  const monitor = path.join(dir, "mirror-qmp.sock");
  // The export is on the command line, before the job: the mirror's filter node then sits between
  // the export and the file, so every write the export takes goes through the mirror.
  const primary = spawn("mirror", [
    "qemu-storage-daemon",
    ...anchorBlockdevs(local, "source", peer.address, "target"),
    "--nbd-server", `addr.type=unix,addr.path=${socket}`,
    "--export", "type=nbd,id=export0,node-name=source,name=disk,writable=on",
    "--chardev", `socket,id=monitor0,path=${monitor},server=on,wait=off`,
    "--monitor", "chardev=monitor0,mode=control",
  ]);
  await waitFor("qemu-mirror listening", () => fs.existsSync(socket) && fs.existsSync(monitor) && socketAnswers(socket), 30_000, primary);
  log("qemu-mirror: blockdev-mirror copy-mode=write-blocking, waiting until ready");
  await qmp(
    monitor,
    [
      { execute: "qmp_capabilities" },
      { execute: "blockdev-mirror", arguments: { "job-id": "mirror0", device: "source", target: "target", sync: "full", "copy-mode": "write-blocking" } },
    ],
    "BLOCK_JOB_READY",
  );
  // Filled once the job is ready: write-blocking, every write of the fill reaches both files.
  const uri = `nbd+unix:///disk?socket=${socket}`;
  await fillThroughExport("qemu-mirror", uri);
  return { name: "qemu-mirror", uri, processes: { "qsd mirror": primary.pid, "qsd peer": peer.pid } };
}

async function startQemuNbd(): Promise<System> {
  log("qemu-nbd-wb: file");
  const file = path.join(dir, "qemu-nbd.img");
  sparseFile(file);
  const socket = path.join(dir, "qemu-nbd.sock");
  const server = spawn("qemu-nbd", ["qemu-nbd", "--persistent", "--shared=16", "--format=raw", "--export-name=disk", "--cache=writeback", "--aio=threads", `--socket=${socket}`, file]);
  await waitFor("qemu-nbd listening", () => fs.existsSync(socket) && socketAnswers(socket), 30_000, server);
  const uri = `nbd+unix:///disk?socket=${socket}`;
  await fillThroughExport("qemu-nbd-wb", uri);
  return { name: "qemu-nbd-wb", uri, processes: { "qemu-nbd": server.pid } };
}

/** The floor runs on the runtime as Tandem's daemons do: with their allocator setting (daemonEnvironment). */
const floorEnvironment = { MIMALLOC_PURGE_DELAY: daemonEnvironment.MIMALLOC_PURGE_DELAY };

/**
 * Start a helper process we own (the floor's peer, the round-trip echo: Bun processes, run with
 * floorEnvironment) that prints "ready PORT" once it listens on a loopback TCP port (within 30 s).
 */
async function spawnListening(name: string, command: string[]): Promise<{ process: import("bun").Subprocess<"ignore", "pipe", "inherit">; port: number }> {
  const child = Bun.spawn(command, { cwd: dir, stdout: "pipe", stderr: "inherit", env: { ...process.env, ...floorEnvironment } });
  started.push({ name, process: child });
  const reader = child.stdout.getReader();
  const deadline = setTimeout(() => void reader.cancel(), 30_000);
  let text = "";
  try {
    while (!text.includes("\n")) {
      const { value, done } = await reader.read();
      if (done) throw new Error(`${name} exited or said nothing within 30 s before listening`);
      text += new TextDecoder().decode(value);
    }
  } finally {
    clearTimeout(deadline);
    reader.releaseLock();
  }
  const port = Number(text.trim().split(" ")[1]);
  if (!Number.isInteger(port) || port <= 0) throw new Error(`${name} said ${JSON.stringify(text.trim())}, not "ready PORT"`);
  return { process: child, port };
}

/** bench/floor-server.ts on a filled file, mirrored to a peer process with a copy of it or alone. */
async function startBunFloor(name: "bun-floor-mirrored" | "bun-floor"): Promise<System> {
  log(`${name}: files${name === "bun-floor-mirrored" ? " and peer" : ""}`);
  const server = path.join(path.dirname(import.meta.path), "floor-server.ts");
  const local = path.join(dir, `${name}-local.img`);
  sparseFile(local);
  const processes: Record<string, number> = {};
  const args: string[] = [];
  if (name === "bun-floor-mirrored") {
    const remote = path.join(dir, `${name}-peer.img`);
    sparseFile(remote);
    const peer = await spawnListening(`${name} peer`, [process.execPath, server, "peer", remote]);
    args.push(String(peer.port));
    processes["peer"] = peer.process.pid;
  }
  const socket = path.join(dir, `${name}.sock`);
  const primary = spawn(name, [process.execPath, server, "nbd", local, socket, ...args], { env: floorEnvironment });
  await waitFor(`${name} listening`, () => fs.existsSync(socket) && socketAnswers(socket), 30_000, primary);
  const uri = `nbd+unix:///bench?socket=${socket}`;
  await fillThroughExport(name, uri);
  return { name, uri, processes: { server: primary.pid, ...processes } };
}

const starters: Record<SystemName, () => Promise<System>> = {
  "tandem-mirrored": () => startTandemLab("tandem-mirrored"),
  "tandem-untagged": () => startTandemLab("tandem-untagged"),
  "qemu-quorum": startQemuQuorum,
  "qemu-mirror": startQemuMirror,
  "tandem-unmirrored": startTandemUnmirrored,
  "qemu-nbd-wb": startQemuNbd,
  "bun-floor-mirrored": () => startBunFloor("bun-floor-mirrored"),
  "bun-floor": () => startBunFloor("bun-floor"),
};

// ---------------------------------------------------------------------------------- measuring
interface FioResult {
  iops: number;
  mibPerSecond: number;
  meanUs: number;
  p50Us: number;
  p99Us: number;
  requests: number;
}

async function fio(uri: string, args: string[]): Promise<FioResult> {
  const output = await run(["fio", "--name=bench", "--ioengine=nbd", `--uri=${uri}`, "--output-format=json", ...args]);
  const job = JSON.parse(output.slice(output.indexOf("{"))).jobs[0];
  const side = job.write.io_bytes > 0 ? job.write : job.read;
  const percentiles = side.clat_ns.percentile ?? {};
  return {
    iops: side.iops,
    mibPerSecond: side.bw_bytes / MiB,
    meanUs: side.lat_ns.mean / 1000,
    p50Us: (percentiles["50.000000"] ?? 0) / 1000,
    p99Us: (percentiles["99.000000"] ?? 0) / 1000,
    requests: side.total_ios,
  };
}

interface Sample extends FioResult {
  system: SystemName;
  workload: WorkloadName;
  round: number;
  /** CPU µs per request, per server process (by role), and their sum. */
  cpuUsPerRequest: Record<string, number>;
  cpuUsPerRequestTotal: number;
}

async function measure(system: System, workload: WorkloadName, round: number): Promise<Sample> {
  // fio's random map (the default) writes no block twice in a pass, so no two writes in flight
  // overlap: QEMU's quorum gives overlapping writes no order, its children would then differ and
  // every later read of that block fail its vote (EIO), as it does for a guest that did that.
  const before = Object.fromEntries(Object.entries(system.processes).map(([role, pid]) => [role, cpuSeconds(pid)]));
  const result = await fio(system.uri, [...workloadArguments[workload], `--size=${sizeBytes}`, "--time_based", `--runtime=${runtimeSeconds}`, "--randrepeat=0"]);
  const cpuUsPerRequest: Record<string, number> = {};
  for (const [role, pid] of Object.entries(system.processes)) cpuUsPerRequest[role] = ((cpuSeconds(pid) - before[role]!) * 1e6) / Math.max(1, result.requests);
  const cpuUsPerRequestTotal = Object.values(cpuUsPerRequest).reduce((sum, value) => sum + value, 0);
  return { ...result, system: system.name, workload, round, cpuUsPerRequest, cpuUsPerRequestTotal };
}

/** 4 KiB out, 4 KiB back, over loopback TCP to another process, `count` times in a row: mean and p50 µs. */
async function roundTrip(count: number): Promise<{ meanUs: number; p50Us: number }> {
  const { process: child, port } = await spawnListening("the round-trip echo process", [process.execPath, import.meta.path, "--echo"]);
  const request = new Uint8Array(4096).fill(0x71);
  const warmup = 500;
  const latencies: number[] = [];
  await new Promise<void>((resolve, reject) => {
    let received = 0;
    let sentAt = 0;
    let trips = 0;
    void Bun.connect({
      hostname: "127.0.0.1",
      port,
      socket: {
        open(socket) {
          socket.setNoDelay(true);
          sentAt = Bun.nanoseconds();
          socket.write(request);
        },
        data(socket, chunk) {
          received += chunk.length;
          if (received < 4096) return;
          received -= 4096;
          if (trips++ >= warmup) latencies.push((Bun.nanoseconds() - sentAt) / 1000);
          if (latencies.length === count) {
            socket.end();
            return resolve();
          }
          sentAt = Bun.nanoseconds();
          socket.write(request);
        },
        error(_socket, error) {
          reject(error);
        },
      },
    }).catch(reject);
  });
  await child.exited;
  return { meanUs: latencies.reduce((sum, value) => sum + value, 0) / latencies.length, p50Us: median(latencies) };
}

// ---------------------------------------------------------------------------------- the run
const samples: Sample[] = [];
let completed = false;
let rtt = { meanUs: 0, p50Us: 0 };
const load: number[] = [];
try {
  const running: System[] = [];
  for (const name of systems) running.push(await starters[name]());
  rtt = await roundTrip(smoke ? 2000 : 20_000);
  log(`4 KiB loopback TCP round trip: mean ${rtt.meanUs.toFixed(1)} µs, p50 ${rtt.p50Us.toFixed(1)} µs`);
  /**
   * Every cell starts with nothing dirty in the page cache: the kernel writes a cell's dirty pages
   * back about 30 s later, in kernel threads on the same two CPUs, which would land on whichever
   * cell runs then (a mirrored system leaves twice the dirty data). `sync` before each cell keeps
   * each system's writeback out of the other systems' figures.
   */
  const settleWriteback = () => {
    const started = performance.now();
    const result = Bun.spawnSync(["sync"]);
    if (result.exitCode !== 0) throw new Error(`sync failed: ${result.stderr.toString()}`);
    const seconds = (performance.now() - started) / 1000;
    if (seconds >= 1) log(`sync before the next cell: ${seconds.toFixed(1)} s`);
  };
  // A server that compiles its code as it runs (Tandem and the floor, on Bun's JIT) is slower in
  // its first seconds on a path: measured on a direct lab after its fill, the first 5 s of 4k
  // writes took 16-20% more CPU per write than the next ones, and QD32 reached 12% fewer IOPS.
  // Each system runs each workload once, unmeasured, before round 1, so every cell sees the steady
  // state a running volume is in (QEMU's servers are compiled ahead and lose nothing by it).
  if (warmupSeconds > 0) {
    for (const system of running) {
      for (const workload of workloads) {
        await fio(system.uri, [...workloadArguments[workload], `--size=${sizeBytes}`, "--time_based", `--runtime=${warmupSeconds}`, "--randrepeat=0"]);
      }
    }
    log(`warm-up: every system ran every workload for ${warmupSeconds} s, unmeasured`);
  }
  for (let round = 1; round <= rounds; round++) {
    // Rotate: each round starts with the next system, so no system always runs first or last.
    const order = running.map((_, index) => running[(index + round - 1) % running.length]!);
    for (const workload of workloads) {
      for (const system of order) {
        settleWriteback();
        const sample = await measure(system, workload, round);
        samples.push(sample);
        load.push(os.loadavg()[0]!);
        log(`round ${round}/${rounds} ${system.name} ${workload}: ${Math.round(sample.iops)} IOPS, mean ${sample.meanUs.toFixed(1)} µs, CPU ${sample.cpuUsPerRequestTotal.toFixed(1)} µs/request`);
      }
    }
  }
  completed = true;
} finally {
  await stopAll();
  for (const stop of labStoppers) await stop();
  // Every system's volume is a filled file of --size (each mirror two): about 14 GiB at the
  // defaults. A run that completed leaves none of it behind; a failed one keeps DIR and its logs.
  if (completed) fs.rmSync(dir, { recursive: true, force: true });
  else log(`the servers' logs and files are kept in ${dir}`);
}

/** CPU µs (this process, user + system) of the tags for one mirrored 4k write: its Write frame and its WriteAck, each tagged by the sender and checked by the receiver. */
function tagCpuUsPerWrite(): number {
  const key = crypto.getRandomValues(new Uint8Array(32));
  const writeFrame = encodeMessage({ type: MessageType.Write, volumeId: 1, requestId: 1, offset: 0, fua: false, data: new Uint8Array(4096) });
  const ackFrame = encodeMessage({ type: MessageType.WriteAck, volumeId: 1, requestId: 1, status: WireStatus.Ok });
  const writes = smoke ? 2000 : 20_000;
  const tagger = frameTagger(key);
  for (let index = 0; index < 2000; index++) tagger.tag(index, writeFrame);
  const before = process.cpuUsage();
  for (let index = 0; index < writes; index++) {
    tagger.tag(index, writeFrame);
    tagger.tag(index, writeFrame);
    tagger.tag(index, ackFrame);
    tagger.tag(index, ackFrame);
  }
  const used = process.cpuUsage(before);
  return (used.user + used.system) / writes;
}
// The implementation the daemons run (they install it the same way at start).
const tagImplementation = installNativeFrameTags();
const tagUs = tagCpuUsPerWrite();

// ---------------------------------------------------------------------------------- the report
const cells = new Map<string, Sample[]>();
for (const sample of samples) {
  const key = `${sample.system}/${sample.workload}`;
  cells.set(key, [...(cells.get(key) ?? []), sample]);
}
const cell = (system: SystemName, workload: WorkloadName, field: (sample: Sample) => number): number | undefined => {
  const mine = cells.get(`${system}/${workload}`);
  return mine ? median(mine.map(field)) : undefined;
};
const format = (value: number | undefined, digits = 0) => (value === undefined ? "—" : value.toFixed(digits));
const spread = (system: SystemName, workload: WorkloadName, field: (sample: Sample) => number) => {
  const mine = cells.get(`${system}/${workload}`);
  if (!mine || mine.length < 2) return "";
  const all = mine.map(field);
  return ` (${Math.round(Math.min(...all))}–${Math.round(Math.max(...all))})`;
};

const lines: string[] = [];
lines.push(
  `Mirrored writes against QEMU's synchronous mirrors: ${values.size ?? (smoke ? "64M" : "1G")} volumes, ${rounds} rotated round(s) × ${runtimeSeconds} s per cell after ${warmupSeconds} s of warm-up per system and workload, medians (min–max); fio nbd engine over unix sockets, page cache everywhere; the QEMU anchors reach their peer over ${anchorLink === "tcp" ? "loopback TCP (as Tandem does)" : "a unix socket"}; ${os.cpus().length} CPUs, load average during the runs ${format(median(load.length ? load : [0]), 1)}; ${new Date().toISOString()}`,
  "",
  "| system | 4k write QD1 mean µs | p50 µs | p99 µs | 4k write QD32 IOPS | 4k read QD1 IOPS | 4k read QD32 IOPS | 1M seq write MiB/s |",
  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
);
for (const system of systems) {
  lines.push(
    `| ${system} | ${format(cell(system, "w4k1", (s) => s.meanUs), 1)}${spread(system, "w4k1", (s) => s.meanUs)} | ${format(cell(system, "w4k1", (s) => s.p50Us), 1)} | ${format(cell(system, "w4k1", (s) => s.p99Us), 1)} | ${format(cell(system, "w4k32", (s) => s.iops))}${spread(system, "w4k32", (s) => s.iops)} | ${format(cell(system, "r4k1", (s) => s.iops))} | ${format(cell(system, "r4k32", (s) => s.iops))} | ${format(cell(system, "sw1m", (s) => s.mibPerSecond))} |`,
  );
}
lines.push("", `Round trip: 4 KiB each way over loopback TCP between two processes: mean ${rtt.meanUs.toFixed(1)} µs, p50 ${rtt.p50Us.toFixed(1)} µs.`, "");
const mirroredCpuQd32 = cell("tandem-mirrored", "w4k32", (s) => s.cpuUsPerRequestTotal);
lines.push(`Frame tags' own CPU per mirrored 4k write (the Write and its WriteAck, each tagged and checked, timed in the benchmark process with ${tagImplementation.implementation}, as the daemons tag): ${tagUs.toFixed(2)} µs${mirroredCpuQd32 ? `, ${((100 * tagUs) / mirroredCpuQd32).toFixed(1)}% of the ${mirroredCpuQd32.toFixed(1)} µs both nodes spend per write at QD32` : ""}.`, "");
lines.push("Server CPU µs per request (utime + stime of each server process over the run / requests completed), medians:", "");
lines.push(`| system | process | ${workloads.join(" | ")} |`, `| --- | --- | ${workloads.map(() => "---:").join(" | ")} |`);
for (const system of systems) {
  const roles = Object.keys(cells.get(`${system}/${workloads[0]}`)?.[0]?.cpuUsPerRequest ?? {});
  for (const role of [...roles, "all"]) {
    const values = workloads.map((workload) => format(cell(system, workload, (s) => (role === "all" ? s.cpuUsPerRequestTotal : s.cpuUsPerRequest[role]!)), 1));
    lines.push(`| ${system} | ${role} | ${values.join(" | ")} |`);
  }
}

// Ratios against the issue's targets.
const targets: string[] = ["| target | measured | ratio | met |", "| --- | --- | ---: | --- |"];
const addTarget = (name: string, measured: string, ratio: number | undefined, met: (ratio: number) => boolean) => {
  if (ratio === undefined || !Number.isFinite(ratio)) return;
  targets.push(`| ${name} | ${measured} | ${ratio.toFixed(2)} | ${met(ratio) ? "yes" : "NO"} |`);
};
const mirroredQd1 = cell("tandem-mirrored", "w4k1", (s) => s.meanUs);
const quorumQd1 = cell("qemu-quorum", "w4k1", (s) => s.meanUs);
const unmirroredQd1 = cell("tandem-unmirrored", "w4k1", (s) => s.meanUs);
if (mirroredQd1 !== undefined && quorumQd1 !== undefined) addTarget("mirrored 4k write QD1 mean latency ≤ 0.8× QEMU quorum's", `${mirroredQd1.toFixed(1)} / ${quorumQd1.toFixed(1)} µs`, mirroredQd1 / quorumQd1, (r) => r <= 0.8);
if (mirroredQd1 !== undefined && unmirroredQd1 !== undefined) {
  const bound = unmirroredQd1 + 1.5 * rtt.meanUs;
  addTarget("mirrored 4k write QD1 mean latency ≤ unmirrored + 1.5× round trip", `${mirroredQd1.toFixed(1)} / (${unmirroredQd1.toFixed(1)} + 1.5 × ${rtt.meanUs.toFixed(1)}) = ${bound.toFixed(1)} µs`, mirroredQd1 / bound, (r) => r <= 1);
}
const betterAnchor = (workload: WorkloadName, field: (sample: Sample) => number) => {
  const candidates = (["qemu-quorum", "qemu-mirror"] as const).map((name) => ({ name, value: cell(name, workload, field) })).filter((entry) => entry.value !== undefined) as { name: string; value: number }[];
  return candidates.sort((x, y) => y.value - x.value)[0];
};
const mirroredQd32 = cell("tandem-mirrored", "w4k32", (s) => s.iops);
const anchorQd32 = betterAnchor("w4k32", (s) => s.iops);
if (mirroredQd32 !== undefined && anchorQd32) addTarget("mirrored 4k write QD32 IOPS ≥ 2.5× the better QEMU anchor", `${Math.round(mirroredQd32)} / ${Math.round(anchorQd32.value)} (${anchorQd32.name})`, mirroredQd32 / anchorQd32.value, (r) => r >= 2.5);
const unmirroredQd32 = cell("tandem-unmirrored", "w4k32", (s) => s.iops);
if (mirroredQd32 !== undefined && unmirroredQd32 !== undefined) addTarget("mirrored 4k write QD32 IOPS ≥ 0.6× unmirrored", `${Math.round(mirroredQd32)} / ${Math.round(unmirroredQd32)}`, mirroredQd32 / unmirroredQd32, (r) => r >= 0.6);
const mirroredSequential = cell("tandem-mirrored", "sw1m", (s) => s.mibPerSecond);
const anchorSequential = betterAnchor("sw1m", (s) => s.mibPerSecond);
if (mirroredSequential !== undefined && anchorSequential) addTarget("mirrored 1M sequential write ≥ 1.2× the better QEMU anchor", `${mirroredSequential.toFixed(0)} / ${anchorSequential.value.toFixed(0)} MiB/s (${anchorSequential.name})`, mirroredSequential / anchorSequential.value, (r) => r >= 1.2);
for (const workload of ["r4k1", "r4k32"] as const) {
  const mirrored = cell("tandem-mirrored", workload, (s) => s.iops);
  const unmirrored = cell("tandem-unmirrored", workload, (s) => s.iops);
  if (mirrored !== undefined && unmirrored !== undefined) addTarget(`mirrored 4k read ${workload === "r4k1" ? "QD1" : "QD32"} IOPS ≥ 1.0× unmirrored`, `${Math.round(mirrored)} / ${Math.round(unmirrored)}`, mirrored / unmirrored, (r) => r >= 1);
}
const untaggedQd32 = cell("tandem-untagged", "w4k32", (s) => s.iops);
if (mirroredQd32 !== undefined && untaggedQd32 !== undefined) addTarget("frame authentication: tagged 4k write QD32 IOPS ≥ 0.9× untagged", `${Math.round(mirroredQd32)} / ${Math.round(untaggedQd32)}`, mirroredQd32 / untaggedQd32, (r) => r >= 0.9);
const mirroredCpu = cell("tandem-mirrored", "w4k1", (s) => s.cpuUsPerRequestTotal);
const unmirroredCpu = cell("tandem-unmirrored", "w4k1", (s) => s.cpuUsPerRequestTotal);
if (mirroredCpu !== undefined && unmirroredCpu !== undefined) addTarget("server CPU per mirrored 4k write (QD1), both nodes, ≤ 2.5× unmirrored", `${mirroredCpu.toFixed(1)} / ${unmirroredCpu.toFixed(1)} µs`, mirroredCpu / unmirroredCpu, (r) => r <= 2.5);

lines.push("", "Targets of the mirrored-write issue (ratios from this run):", "", ...targets);

// What Tandem adds over the runtime's floor (bench/floor-server.ts), cell by cell.
const floorPairs = [
  ["tandem-mirrored", "bun-floor-mirrored"],
  ["tandem-unmirrored", "bun-floor"],
] as const;
const floorMeasures = [
  ["4k write QD1 mean µs", "w4k1", (s: Sample) => s.meanUs],
  ["4k write QD1 CPU µs/write", "w4k1", (s: Sample) => s.cpuUsPerRequestTotal],
  ["4k write QD32 IOPS", "w4k32", (s: Sample) => s.iops],
  ["4k write QD32 CPU µs/write", "w4k32", (s: Sample) => s.cpuUsPerRequestTotal],
  ["4k read QD32 IOPS", "r4k32", (s: Sample) => s.iops],
  ["1M seq write MiB/s", "sw1m", (s: Sample) => s.mibPerSecond],
] as const;
const floorRows: string[] = [];
for (const [ours, floor] of floorPairs) {
  for (const [measure, workload, field] of floorMeasures) {
    const mine = cell(ours, workload, field);
    const base = cell(floor, workload, field);
    if (mine !== undefined && base !== undefined) floorRows.push(`| ${ours} / ${floor} | ${measure} | ${mine.toFixed(1)} / ${base.toFixed(1)} | ${(mine / base).toFixed(2)} |`);
  }
}
if (floorRows.length > 0) lines.push("", "Tandem over the runtime's floor (bench/floor-server.ts: NBD and a mirror in bare Bun, nothing else):", "", "| systems | measure | measured | ratio |", "| --- | --- | --- | ---: |", ...floorRows);
console.log(lines.join("\n"));
if (values.json) fs.writeFileSync(values.json, JSON.stringify({ options: { sizeBytes, runtimeSeconds, rounds, warmupSeconds, systems, workloads, smoke, anchorLink }, roundTrip: rtt, tagCpuUsPerWrite: tagUs, tagImplementation, samples }, null, 1));
