// Proves that the mirrored-write benchmark still runs end to end (bench/replica.ts --smoke: 64 MiB
// volumes, one round of 1 s per cell): the direct-link labs (tagged frames, and untagged for the
// frame-authentication A/B), the standalone node, qemu-nbd, both
// QEMU anchors (the quorum node over an NBD child, and the write-blocking mirror started over QMP)
// and the runtime's floors (bench/floor-server.ts, mirrored and alone) all start, fill through
// their exports and serve, every system is measured on every workload with fio, the CPU of every
// server process is read, the report states each target of the mirrored-write issue and Tandem's
// ratios over the floors, and a completed run leaves no volume files behind. The figures of so
// short a run mean nothing and are not checked; that the benchmark works is.
import { afterAll, expect, test } from "bun:test";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { repositoryRoot } from "../helpers/daemon.ts";

const directory = fs.mkdtempSync(path.join(os.tmpdir(), "tandem-bench-smoke-"));
afterAll(() => fs.rmSync(directory, { recursive: true, force: true }));

interface SampleJson {
  system: string;
  workload: string;
  requests: number;
  cpuUsPerRequest: Record<string, number>;
}

test("bench/replica.ts --smoke measures every system on every workload and states every target", async () => {
  const jsonPath = path.join(directory, "result.json");
  const child = Bun.spawn([process.execPath, path.join(repositoryRoot, "bench", "replica.ts"), "--smoke", "--dir", path.join(directory, "run"), "--json", jsonPath], {
    cwd: repositoryRoot,
    stdout: "pipe",
    stderr: "pipe",
  });
  const timer = setTimeout(() => child.kill("SIGKILL"), 400_000);
  const [stdout, stderr, code] = await Promise.all([new Response(child.stdout).text(), new Response(child.stderr).text(), child.exited]);
  clearTimeout(timer);
  expect({ code, stderr: code === 0 ? "" : stderr }).toEqual({ code: 0, stderr: "" });
  const result = JSON.parse(fs.readFileSync(jsonPath, "utf8")) as { samples: SampleJson[]; roundTrip: { meanUs: number }; tagCpuUsPerWrite: number; tagImplementation: { implementation: string } };
  const systems = ["tandem-mirrored", "tandem-untagged", "qemu-quorum", "qemu-mirror", "tandem-unmirrored", "qemu-nbd-wb", "bun-floor-mirrored", "bun-floor"];
  const workloads = ["w4k1", "w4k32", "r4k1", "r4k32", "sw1m"];
  const processes: Record<string, string[]> = {
    "tandem-mirrored": ["node a", "node b"],
    "tandem-untagged": ["node a", "node b"],
    "qemu-quorum": ["qsd quorum", "qsd peer"],
    "qemu-mirror": ["qsd mirror", "qsd peer"],
    "tandem-unmirrored": ["node"],
    "qemu-nbd-wb": ["qemu-nbd"],
    "bun-floor-mirrored": ["server", "peer"],
    "bun-floor": ["server"],
  };
  for (const system of systems) {
    for (const workload of workloads) {
      const sample = result.samples.find((entry) => entry.system === system && entry.workload === workload);
      expect({ system, workload, measured: (sample?.requests ?? 0) > 0 }).toEqual({ system, workload, measured: true });
      expect(Object.keys(sample!.cpuUsPerRequest).sort()).toEqual([...processes[system]!].sort());
    }
  }
  expect(result.roundTrip.meanUs).toBeGreaterThan(0);
  expect(result.tagCpuUsPerWrite).toBeGreaterThan(0);
  // Timed with what the daemons run: libcrypto, which setup.sh installs.
  expect(result.tagImplementation.implementation).toStartWith("libcrypto");
  for (const target of ["≤ 0.8× QEMU quorum's", "≤ unmirrored + 1.5× round trip", "≥ 2.5× the better QEMU anchor", "≥ 0.6× unmirrored", "1M sequential write ≥ 1.2×", "read QD1 IOPS ≥ 1.0×", "read QD32 IOPS ≥ 1.0×", "both nodes, ≤ 2.5× unmirrored", "tagged 4k write QD32 IOPS ≥ 0.9× untagged", "Frame tags' own CPU"]) {
    expect(stdout).toContain(target);
  }
  expect(stdout).toContain("| tandem-mirrored / bun-floor-mirrored | 4k write QD1 mean µs |");
  expect(stdout).toContain("| tandem-unmirrored / bun-floor | 4k write QD32 IOPS |");
  expect(fs.existsSync(path.join(directory, "run"))).toBe(false);
}, 420_000);
