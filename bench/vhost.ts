// vhost-user-blk benchmark: fio inside the same QEMU guest (test/helpers/vhost-guest.ts, TCG here) on a
// vhost-user-blk disk served by Tandem and by qemu-storage-daemon, same backing file (filled with
// random data), both O_DIRECT (--cache none, the default, as the lab's guest-qsd baseline) or both
// through the page cache (--cache writeback: Tandem's buffered file layer, qsd cache.direct=off).
// Workloads: 4k random read and write at iodepth 1 and 32, 1M
// sequential write at iodepth 8. Targets are interleaved run by run so that drift on a shared
// machine hits both alike; each cell is the median of the runs with its min–max. Under TCG the
// guest CPU bounds both back-ends, so only the ratio means anything.
//
//   bun bench/vhost.ts [--runs 3] [--runtime 15] [--size 1G] [--workloads rr4k1,rr4k32,rw4k1,rw4k32,sw1m8]
//                      [--queues 1] [--cache none|writeback] [--dir DIR] [--no-fill]
// Needs what packaging/setup.sh installs: qemu-system-x86_64, qemu-storage-daemon, fio, busybox-static.
// Targets: QD32 IOPS >= 0.7x qsd; QD1 median latency <= 1.3x qsd.
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { parseArgs } from "node:util";
import { parseSize } from "../src/common/size.ts";
import { median } from "./stats.ts";
import { startBackendProcess, type BackendProcess } from "../test/helpers/vhost-backend-process.ts";
import { fioScript, runGuest, vhostLabDirectory } from "../test/helpers/vhost-guest.ts";

const { values } = parseArgs({
  options: {
    runs: { type: "string", default: "3" },
    runtime: { type: "string", default: "15" },
    size: { type: "string", default: "1G" },
    workloads: { type: "string", default: "rr4k1,rr4k32,rw4k1,rw4k32,sw1m8" },
    queues: { type: "string", default: "1" },
    cache: { type: "string", default: "none" },
    dir: { type: "string", default: path.join(os.tmpdir(), "tandem-vhost-bench") },
    "no-fill": { type: "boolean", default: false },
  },
});

const workloadArgs: Record<string, { fio: string; qd1: boolean }> = {
  rr4k1: { fio: "--rw=randread --bs=4k --iodepth=1", qd1: true },
  rr4k32: { fio: "--rw=randread --bs=4k --iodepth=32", qd1: false },
  rw4k1: { fio: "--rw=randwrite --bs=4k --iodepth=1", qd1: true },
  rw4k32: { fio: "--rw=randwrite --bs=4k --iodepth=32", qd1: false },
  sw1m8: { fio: "--rw=write --bs=1M --iodepth=8", qd1: false },
};

const runs = Number(values.runs);
const runtime = Number(values.runtime);
const queues = Number(values.queues);
const workloads = values.workloads!.split(",").filter(Boolean);
const cache = values.cache!;
if (cache !== "none" && cache !== "writeback") throw new Error("--cache must be none or writeback");
for (const workload of workloads) if (!workloadArgs[workload]) throw new Error(`unknown workload ${workload}`);
const dir = values.dir!;
fs.mkdirSync(path.join(dir, "runs"), { recursive: true });
const image = path.join(dir, "disk.img");
const labDir = vhostLabDirectory();

function sh(command: string[], env: Record<string, string> = {}): { code: number; stdout: string; stderr: string } {
  const result = Bun.spawnSync(command, { env: { ...process.env, ...env }, stdout: "pipe", stderr: "pipe" });
  return { code: result.exitCode ?? -1, stdout: result.stdout.toString(), stderr: result.stderr.toString() };
}

if (!values["no-fill"] || !fs.existsSync(image)) {
  // Random data everywhere, as bench.sh does: a sparse file would make reads free.
  fs.rmSync(image, { force: true });
  const sizeBytes = parseSize(values.size!);
  process.stderr.write(`filling ${image} (${sizeBytes} bytes) with random data\n`);
  const fill = sh(["fio", "--name=fill", `--filename=${image}`, `--size=${sizeBytes}`, "--rw=write", "--bs=1M", "--iodepth=8", "--ioengine=libaio", "--direct=1", "--refill_buffers", "--output=/dev/null"]);
  if (fill.code !== 0) throw new Error(`fill failed: ${fill.stderr}`);
}

interface Sample {
  iops: number;
  p50Us: number;
  p99Us: number;
  meanUs: number;
}

type Target = "tandem" | "qsd";
const targets: Target[] = ["tandem", "qsd"];
const samples = new Map<string, Sample[]>();
const sockets: Record<Target, string> = { tandem: path.join(dir, "tandem.sock"), qsd: path.join(dir, "qsd.sock") };

async function startTarget(target: Target): Promise<() => Promise<void>> {
  if (target === "tandem") {
    const backend: BackendProcess = await startBackendProcess({ file: image, socket: sockets.tandem, queues, logFile: path.join(dir, "tandem.log"), logLevel: "warn", buffered: cache === "writeback" });
    return async () => void (await backend.stop("SIGTERM"));
  }
  // The same configuration as the reference baseline: O_DIRECT with native AIO, or the page cache with threads.
  const fileOptions = cache === "none" ? "cache.direct=on,aio=native" : "cache.direct=off,aio=threads";
  fs.rmSync(sockets.qsd, { force: true });
  const qsd = Bun.spawn(
    [
      "qemu-storage-daemon",
      "--blockdev", `driver=file,node-name=file0,filename=${image},${fileOptions}`,
      "--blockdev", "driver=raw,node-name=disk0,file=file0",
      "--export", `type=vhost-user-blk,id=exp0,node-name=disk0,addr.type=unix,addr.path=${sockets.qsd},writable=on,num-queues=${queues}`,
    ],
    { stdout: "ignore", stderr: Bun.file(path.join(dir, "qsd.log")) },
  );
  for (let i = 0; i < 100 && !fs.existsSync(sockets.qsd); i++) await Bun.sleep(100);
  if (!fs.existsSync(sockets.qsd)) {
    qsd.kill("SIGKILL");
    throw new Error(`qemu-storage-daemon did not create its socket: ${fs.readFileSync(path.join(dir, "qsd.log"), "utf8")}`);
  }
  return async () => {
    qsd.kill("SIGTERM");
    await qsd.exited;
  };
}

async function runGuestFio(target: Target, workload: string, run: number): Promise<Sample | undefined> {
  const out = path.join(dir, "runs", `${target}.${workload}.${run}.json`);
  const args = `${workloadArgs[workload]!.fio} --runtime=${runtime} --time_based`;
  try {
    const guest = await runGuest({ socket: sockets[target], labDir, queues, timeoutSeconds: runtime + 60, script: fioScript(args) });
    fs.writeFileSync(out, JSON.stringify(guest.json ?? null));
    if (!guest.ok || !guest.json) throw new Error(guest.stderr.slice(-500));
    const job = (guest.json as { jobs: any[] }).jobs[0];
    const side = job.write.io_bytes > 0 ? job.write : job.read;
    const percentiles = side.clat_ns.percentile ?? {};
    return { iops: side.iops, p50Us: (percentiles["50.000000"] ?? 0) / 1000, p99Us: (percentiles["99.000000"] ?? 0) / 1000, meanUs: side.lat_ns.mean / 1000 };
  } catch (error) {
    process.stderr.write(`run failed: ${target} ${workload} ${run}: ${(error as Error).message}\n`);
    return undefined;
  }
}

// Both servers stay up for the whole run (only one guest uses the file at a time) so the runs can
// alternate between them.
const stops = [];
for (const target of targets) stops.push(await startTarget(target));
try {
  for (let run = 1; run <= runs; run++) {
    for (const workload of workloads) {
      for (const target of run % 2 === 1 ? targets : [...targets].reverse()) {
        process.stderr.write(`${new Date().toISOString().slice(11, 19)} ${target} ${workload} run ${run}/${runs}\n`);
        const sample = await runGuestFio(target, workload, run);
        if (sample) samples.set(`${target}.${workload}`, [...(samples.get(`${target}.${workload}`) ?? []), sample]);
      }
    }
  }
} finally {
  for (const stop of stops) await stop();
}

const round = (value: number, digits = 0) => Number(value.toFixed(digits));

const rows: string[] = [
  `vhost-user-blk in a TCG guest, cache=${cache}, ${runs} run(s) x ${runtime}s per cell, ${queues} queue(s); median (min–max); latencies in µs`,
  "(fio's clat percentiles are histogram buckets; the mean latency ratio is the steadier QD1 figure)",
  "",
  "| workload | Tandem IOPS | qsd IOPS | IOPS ratio | Tandem clat p50 / p99 | qsd clat p50 / p99 | p50 ratio | mean lat ratio | target |",
  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
];
const summary: Record<string, unknown>[] = [];
for (const workload of workloads) {
  const tandem = samples.get(`tandem.${workload}`) ?? [];
  const qsd = samples.get(`qsd.${workload}`) ?? [];
  if (tandem.length === 0 || qsd.length === 0) {
    rows.push(`| ${workload} | (no data) | | | | | | | |`);
    continue;
  }
  const cell = (list: Sample[]) => `${round(median(list.map((s) => s.iops)))} (${round(Math.min(...list.map((s) => s.iops)))}–${round(Math.max(...list.map((s) => s.iops)))})`;
  const iopsRatio = median(tandem.map((s) => s.iops)) / median(qsd.map((s) => s.iops));
  const p50Ratio = median(tandem.map((s) => s.p50Us)) / median(qsd.map((s) => s.p50Us));
  const meanRatio = median(tandem.map((s) => s.meanUs)) / median(qsd.map((s) => s.meanUs));
  const qd1 = workloadArgs[workload]!.qd1;
  const target = qd1
    ? `latency ≤ 1.3×: p50 ${p50Ratio <= 1.3 ? "met" : "missed"}, mean ${meanRatio <= 1.3 ? "met" : "missed"}`
    : workload.endsWith("32")
      ? `IOPS ≥ 0.7×: ${iopsRatio >= 0.7 ? "met" : "missed"}`
      : "—";
  rows.push(
    `| ${workload} | ${cell(tandem)} | ${cell(qsd)} | ${iopsRatio.toFixed(2)} | ${round(median(tandem.map((s) => s.p50Us)), 1)} / ${round(median(tandem.map((s) => s.p99Us)), 1)} | ${round(median(qsd.map((s) => s.p50Us)), 1)} / ${round(median(qsd.map((s) => s.p99Us)), 1)} | ${p50Ratio.toFixed(2)} | ${meanRatio.toFixed(2)} | ${target} |`,
  );
  summary.push({ workload, cache, tandem, qsd, iopsRatio, p50Ratio, meanRatio });
}
const table = rows.join("\n");
fs.writeFileSync(path.join(dir, "summary.md"), table + "\n");
fs.writeFileSync(path.join(dir, "summary.json"), JSON.stringify(summary, null, 1));
console.log(table);
