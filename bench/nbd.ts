// Benchmark: Tandem's NBD target against qemu-nbd (and qemu-storage-daemon's NBD export) on the
// same 1 GiB file of random data, with fio's nbd engine over a unix socket. Like is compared
// with like: Tandem's default page-cache mode against qemu-nbd --cache=writeback, and Tandem's
// --direct (O_DIRECT) mode against qemu-nbd --cache=none --aio=native. Runs are interleaved
// across servers so that noise from a shared machine spreads over all of them; the table gives
// the median and the spread of each, then the ratios the targets are stated in.
//
//   bun bench/nbd.ts [--runtime S] [--runs N] [--size 1G] [--dir DIR]
//                    [--targets tandem,qemu-nbd-wb,...] [--workloads rr4k1,rr4k32,...] [--json FILE]
//                    [--threadpool N]
//
// Targets: tandem, tandem-direct, tandem-direct-nopoll, tandem-direct-pool, qemu-nbd-wb,
// qemu-nbd-direct, qsd-nbd-wb, qsd-nbd-direct. tandem-direct runs its O_DIRECT IO on io_uring (the
// default engine where the kernel has it), with the polling budget of the environment
// (TANDEM_IO_POLL_US, else the default); tandem-direct-nopoll is the same with polling off
// (TANDEM_IO_POLL_US=0) and tandem-direct-pool the same server forced onto the thread pool
// (TANDEM_IO_ENGINE=threadpool), so one run shows what polling and io_uring each change.
// Workloads: rr4k1 rr4k32 (4k random read, QD1/QD32), rw4k1 rw4k32 (4k random write), sw1m8
// (1 MiB sequential write, QD8). Page-cache servers get the file read into the cache first.
// Tandem's servers run with the service unit's environment (daemonEnvironment: UV_THREADPOOL_SIZE=32,
// the allocator's purge delay), as packaging/tandem.service and the lab run the
// daemon (the NBD server keeps its storage operations in flight to three quarters of that pool,
// whichever engine runs them); --threadpool N says another size.
// Not a test: it prints what it measured and exits 0 unless a server or fio fails to run.
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { parseSize } from "../src/common/size.ts";
import { daemonEnvironment } from "../src/constants.ts";
import { median } from "./stats.ts";

const MiB = 1024 * 1024;
const here = path.dirname(new URL(import.meta.url).pathname);

interface Options {
  runtimeSeconds: number;
  runs: number;
  sizeBytes: number;
  directory: string;
  targets: string[];
  workloads: string[];
  jsonPath?: string;
  threadpool?: number;
}

const allTargets = ["tandem", "qemu-nbd-wb", "tandem-direct", "tandem-direct-nopoll", "tandem-direct-pool", "qemu-nbd-direct", "qsd-nbd-wb", "qsd-nbd-direct"];
const workloadArguments: Record<string, string[]> = {
  rr4k1: ["--rw=randread", "--bs=4k", "--iodepth=1"],
  rr4k32: ["--rw=randread", "--bs=4k", "--iodepth=32"],
  rw4k1: ["--rw=randwrite", "--bs=4k", "--iodepth=1"],
  rw4k32: ["--rw=randwrite", "--bs=4k", "--iodepth=32"],
  sw1m8: ["--rw=write", "--bs=1M", "--iodepth=8"],
};

function parseOptions(argv: string[]): Options {
  const options: Options = {
    runtimeSeconds: 10,
    runs: 3,
    sizeBytes: 1024 * MiB,
    directory: "",
    targets: allTargets,
    workloads: Object.keys(workloadArguments),
  };
  for (let index = 0; index < argv.length; index++) {
    const flag = argv[index]!;
    const value = argv[index + 1];
    const need = () => {
      if (value === undefined) throw new Error(`${flag} needs a value`);
      index++;
      return value;
    };
    switch (flag) {
      case "--runtime":
        options.runtimeSeconds = Number(need());
        break;
      case "--runs":
        options.runs = Number(need());
        break;
      case "--size":
        options.sizeBytes = parseSize(need());
        break;
      case "--dir":
        options.directory = need();
        break;
      case "--targets":
        options.targets = need().split(",");
        break;
      case "--workloads":
        options.workloads = need().split(",");
        break;
      case "--json":
        options.jsonPath = need();
        break;
      case "--threadpool":
        options.threadpool = Number(need());
        break;
      case "--help":
      case "-h":
        console.log(fs.readFileSync(new URL(import.meta.url), "utf8").split("\n").filter((line) => line.startsWith("//")).join("\n"));
        process.exit(0);
      default:
        throw new Error(`unknown option ${flag} (see --help)`);
    }
  }
  for (const target of options.targets) if (!allTargets.includes(target)) throw new Error(`unknown target ${target}`);
  for (const workload of options.workloads) if (!workloadArguments[workload]) throw new Error(`unknown workload ${workload}`);
  if (!(options.runtimeSeconds > 0) || !(options.runs >= 1)) throw new Error("--runtime and --runs must be positive");
  return options;
}

async function run(command: string[], quiet = true, cwd?: string): Promise<string> {
  const child = Bun.spawn(command, { stdout: "pipe", stderr: "pipe", cwd });
  const [stdout, stderr, code] = await Promise.all([new Response(child.stdout).text(), new Response(child.stderr).text(), child.exited]);
  if (code !== 0) throw new Error(`${command.join(" ")} exited ${code}: ${stderr.trim() || stdout.trim()}`);
  if (!quiet) process.stderr.write(stderr);
  return stdout;
}

/** A server process we started; stopped by its own PID only. */
interface Server {
  target: string;
  socketPath: string;
  exportName: string;
  process: import("bun").Subprocess;
}

async function waitForSocket(socketPath: string, child: import("bun").Subprocess, what: string): Promise<void> {
  const deadline = Date.now() + 15_000;
  while (Date.now() < deadline) {
    if (child.exitCode !== null) throw new Error(`${what} exited with ${child.exitCode} before listening`);
    if (fs.existsSync(socketPath)) {
      const ready = await Bun.connect({ unix: socketPath, socket: { data() {}, connectError() {} } }).then(
        (socket) => {
          socket.terminate();
          return true;
        },
        () => false,
      );
      if (ready) return;
    }
    await Bun.sleep(50);
  }
  throw new Error(`${what} did not listen on ${socketPath}`);
}

async function startServer(target: string, image: string, directory: string, threadpool?: number): Promise<Server> {
  const socketPath = path.join(directory, `${target}.sock`);
  fs.rmSync(socketPath, { force: true });
  const log = fs.openSync(path.join(directory, `${target}.log`), "w");
  let command: string[];
  switch (target) {
    case "tandem":
    case "tandem-direct":
    case "tandem-direct-nopoll":
    case "tandem-direct-pool":
      command = [process.execPath, path.join(here, "nbd-serve.ts"), image, socketPath, "--name", "disk", ...(target.startsWith("tandem-direct") ? ["--direct"] : [])];
      break;
    case "qemu-nbd-wb":
    case "qemu-nbd-direct":
      command = [
        "qemu-nbd",
        "--persistent",
        "--shared=16",
        "--format=raw",
        "--export-name=disk",
        ...(target === "qemu-nbd-wb" ? ["--cache=writeback", "--aio=threads"] : ["--cache=none", "--aio=native"]),
        `--socket=${socketPath}`,
        image,
      ];
      break;
    case "qsd-nbd-wb":
    case "qsd-nbd-direct": {
      const cache = target === "qsd-nbd-wb" ? "cache.direct=off,aio=threads" : "cache.direct=on,aio=native";
      command = [
        "qemu-storage-daemon",
        "--blockdev",
        `driver=file,node-name=file0,filename=${image},${cache}`,
        "--blockdev",
        "driver=raw,node-name=disk0,file=file0",
        "--nbd-server",
        `addr.type=unix,addr.path=${socketPath}`,
        "--export",
        "type=nbd,id=exp0,node-name=disk0,name=disk,writable=on",
      ];
      break;
    }
    default:
      throw new Error(`unknown target ${target}`);
  }
  const env = { ...process.env };
  if (target.startsWith("tandem")) Object.assign(env, daemonEnvironment, threadpool === undefined ? {} : { UV_THREADPOOL_SIZE: String(threadpool) });
  if (target === "tandem-direct") env.TANDEM_IO_ENGINE = "io_uring";
  if (target === "tandem-direct-nopoll") Object.assign(env, { TANDEM_IO_ENGINE: "io_uring", TANDEM_IO_POLL_US: "0" });
  if (target === "tandem-direct-pool") env.TANDEM_IO_ENGINE = "threadpool";
  const child = Bun.spawn(command, { stdout: log, stderr: log, env });
  await waitForSocket(socketPath, child, target);
  return { target, socketPath, exportName: "disk", process: child };
}

async function stopServer(server: Server): Promise<void> {
  if (server.process.exitCode !== null) return;
  server.process.kill("SIGTERM");
  const exited = await Promise.race([server.process.exited.then(() => true), Bun.sleep(5000).then(() => false)]);
  if (!exited) server.process.kill("SIGKILL");
  fs.rmSync(server.socketPath, { force: true });
}

interface Sample {
  target: string;
  workload: string;
  run: number;
  iops: number;
  mibPerSecond: number;
  latencyP50Us: number;
  latencyP99Us: number;
}

async function measure(server: Server, workload: string, options: Options, runNumber: number): Promise<Sample> {
  const uri = `nbd+unix:///${server.exportName}?socket=${server.socketPath}`;
  const output = await run([
    "fio",
    `--name=${workload}`,
    "--ioengine=nbd",
    `--uri=${uri}`,
    ...workloadArguments[workload]!,
    `--size=${options.sizeBytes}`,
    `--runtime=${options.runtimeSeconds}`,
    "--time_based",
    "--output-format=json",
  ], true, path.dirname(server.socketPath));
  const job = JSON.parse(output.slice(output.indexOf("{"))).jobs[0];
  const side = job.write.io_bytes > 0 ? job.write : job.read;
  const percentiles = side.clat_ns.percentile ?? {};
  return {
    target: server.target,
    workload,
    run: runNumber,
    iops: side.iops,
    mibPerSecond: side.bw_bytes / MiB,
    latencyP50Us: (percentiles["50.000000"] ?? 0) / 1000,
    latencyP99Us: (percentiles["99.000000"] ?? 0) / 1000,
  };
}

interface Summary {
  target: string;
  workload: string;
  runs: number;
  iops: number;
  iopsMin: number;
  iopsMax: number;
  spreadPercent: number;
  mibPerSecond: number;
  latencyP50Us: number;
  latencyP99Us: number;
}

function summarise(samples: Sample[], targets: string[], workloads: string[]): Summary[] {
  const out: Summary[] = [];
  for (const target of targets) {
    for (const workload of workloads) {
      const mine = samples.filter((sample) => sample.target === target && sample.workload === workload);
      if (mine.length === 0) continue;
      const iops = mine.map((sample) => sample.iops);
      const middle = median(iops);
      out.push({
        target,
        workload,
        runs: mine.length,
        iops: middle,
        iopsMin: Math.min(...iops),
        iopsMax: Math.max(...iops),
        spreadPercent: (100 * (Math.max(...iops) - Math.min(...iops))) / Math.max(1, middle),
        mibPerSecond: median(mine.map((sample) => sample.mibPerSecond)),
        latencyP50Us: median(mine.map((sample) => sample.latencyP50Us)),
        latencyP99Us: median(mine.map((sample) => sample.latencyP99Us)),
      });
    }
  }
  return out;
}

function table(summaries: Summary[]): string {
  const rows = [
    "| target | workload | IOPS (median) | min–max (spread) | MiB/s | p50 µs | p99 µs |",
    "| --- | --- | ---: | --- | ---: | ---: | ---: |",
  ];
  for (const entry of summaries) {
    rows.push(
      `| ${entry.target} | ${entry.workload} | ${Math.round(entry.iops)} | ${Math.round(entry.iopsMin)}–${Math.round(entry.iopsMax)} (${entry.spreadPercent.toFixed(1)}%) | ${entry.mibPerSecond.toFixed(1)} | ${entry.latencyP50Us.toFixed(1)} | ${entry.latencyP99Us.toFixed(1)} |`,
    );
  }
  return rows.join("\n");
}

/**
 * The stated targets: QD1 latency ≤ 1.5× the reference, QD32 IOPS ≥ 0.7×, sequential bandwidth ≥
 * 0.8×; for the O_DIRECT engines against qemu-nbd --aio=native, the stricter ones of the mirrored
 * write issue: QD1 latency ≤ 1.1×, QD32 IOPS ≥ 1.0×.
 */
function ratios(summaries: Summary[]): string {
  const find = (target: string, workload: string) => summaries.find((entry) => entry.target === target && entry.workload === workload);
  const pairs: [string, string][] = [
    ["tandem", "qemu-nbd-wb"],
    ["tandem", "qemu-nbd-direct"],
    ["tandem-direct", "qemu-nbd-direct"],
    ["tandem-direct-nopoll", "qemu-nbd-direct"],
    ["tandem-direct-pool", "qemu-nbd-direct"],
    ["tandem-direct", "tandem-direct-nopoll"],
    ["tandem-direct", "tandem-direct-pool"],
    ["tandem", "qsd-nbd-wb"],
    ["tandem-direct", "qsd-nbd-direct"],
  ];
  const rows = ["| ours / reference | workload | measure | ratio | target | met |", "| --- | --- | --- | ---: | --- | --- |"];
  for (const [ours, reference] of pairs) {
    const strict = ours.startsWith("tandem-direct") && reference === "qemu-nbd-direct";
    for (const workload of ["rr4k1", "rw4k1", "rr4k32", "rw4k32", "sw1m8"]) {
      const a = find(ours, workload);
      const b = find(reference, workload);
      if (!a || !b) continue;
      let measure: string;
      let ratio: number;
      let goal: string;
      let met: boolean;
      if (workload.endsWith("k1")) {
        measure = "p50 latency";
        ratio = a.latencyP50Us / b.latencyP50Us;
        goal = strict ? "≤ 1.1" : "≤ 1.5";
        met = ratio <= (strict ? 1.1 : 1.5);
      } else if (workload === "sw1m8") {
        measure = "bandwidth";
        ratio = a.mibPerSecond / b.mibPerSecond;
        goal = "≥ 0.8";
        met = ratio >= 0.8;
      } else {
        measure = "IOPS";
        ratio = a.iops / b.iops;
        goal = strict ? "≥ 1.0" : "≥ 0.7";
        met = ratio >= (strict ? 1.0 : 0.7);
      }
      const comparison = reference.startsWith("tandem-direct-"); // polling or io_uring against the same server without: no target, just the difference
      rows.push(`| ${ours} / ${reference} | ${workload} | ${measure} | ${ratio.toFixed(2)} | ${comparison ? "—" : goal} | ${comparison ? "—" : met ? "yes" : "NO"} |`);
    }
  }
  return rows.join("\n");
}

async function main(): Promise<void> {
  const options = parseOptions(process.argv.slice(2));
  const directory = options.directory || fs.mkdtempSync(path.join(os.tmpdir(), "tandem-bench-nbd-"));
  fs.mkdirSync(directory, { recursive: true });
  const image = path.join(directory, "disk.img");
  console.error(`bench: ${options.targets.join(", ")} × ${options.workloads.join(", ")}, ${options.runs} runs × ${options.runtimeSeconds} s, in ${directory}`);
  // The same file for every server, full of random data so that no read is free.
  if (!fs.existsSync(image) || fs.statSync(image).size !== options.sizeBytes) {
    fs.rmSync(image, { force: true });
    await run(["fio", "--name=fill", `--filename=${image}`, "--rw=write", "--bs=1M", "--iodepth=8", "--ioengine=libaio", "--direct=1", "--refill_buffers", `--size=${options.sizeBytes}`, "--output=/dev/null"]);
  }
  const started: Server[] = [];
  const stopAll = async () => {
    for (const server of started.splice(0)) await stopServer(server);
  };
  process.on("SIGINT", () => void stopAll().then(() => process.exit(130)));
  const samples: Sample[] = [];
  try {
    for (let runNumber = 1; runNumber <= options.runs; runNumber++) {
      for (const target of options.targets) {
        await run(["sync"]);
        // Page-cache servers start from a warm cache (what a running volume has); O_DIRECT ones do not use it.
        if (!target.includes("direct")) await run(["dd", `if=${image}`, "of=/dev/null", "bs=4M"]);
        const server = await startServer(target, image, directory, options.threadpool);
        started.push(server);
        try {
          for (const workload of options.workloads) {
            const sample = await measure(server, workload, options, runNumber);
            samples.push(sample);
            console.error(
              `run ${runNumber} ${target} ${workload}: ${Math.round(sample.iops)} IOPS, ${sample.mibPerSecond.toFixed(1)} MiB/s, p50 ${sample.latencyP50Us.toFixed(1)} µs, p99 ${sample.latencyP99Us.toFixed(1)} µs`,
            );
          }
        } finally {
          await stopServer(server);
          started.splice(started.indexOf(server), 1);
        }
      }
    }
  } finally {
    await stopAll();
  }
  const summaries = summarise(samples, options.targets, options.workloads);
  const pool = `UV_THREADPOOL_SIZE=${options.threadpool ?? 32} for Tandem's servers`;
  console.log(`\nNBD over a unix socket, fio ioengine=nbd, ${options.runs} runs × ${options.runtimeSeconds} s, ${os.cpus().length} CPUs, ${pool}, load ${os.loadavg()[0]!.toFixed(1)}, ${new Date().toISOString()}\n`);
  console.log(table(summaries));
  console.log("\n" + ratios(summaries));
  if (options.jsonPath) fs.writeFileSync(options.jsonPath, JSON.stringify({ options, samples, summaries }, null, 1));
  if (!options.directory) fs.rmSync(directory, { recursive: true, force: true });
}

await main();
