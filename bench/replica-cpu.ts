// The mirrored write's CPU cost in the replica code alone, without sockets, files or the NBD server:
// both nodes' real drivers (ReplicaDriver → NodeCore → VolumeCore, the wire codec, per-frame
// authentication with the tags and the native CRC32C the daemon installs, writes handed over as
// the NBD server hands them: stable buffers, no admission copy) run in this one process over the
// simulator's disks and network (test/sim/scenario.ts, no faults), and the benchmark reports the
// process's CPU time (user + system) per mirrored 4 KiB write. The figure includes the simulator's
// own work (its scheduler, its disks' copies, its network's joins), the same in every run, so it
// is an upper bound of the replica code's cost and its changes are the replica code's; the
// syscalls and the kernel's TCP work a daemon adds are bench/replica.ts's to measure.
// Written to compare two versions of the write path on a busy machine: the kernel work, the other
// processes and the scheduler's noise that swamp the daemons' figures stay out of this one.
//
//   bun bench/replica-cpu.ts [--writes 20000] [--rounds 5] [--iodepth 1] [--json]
//   bun --cpu-prof --cpu-prof-dir=DIR bench/replica-cpu.ts   (where the time goes)
import { parseArgs } from "node:util";
import { fastCrc32c } from "../src/common/crc32c-native.ts";
import { installNativeFrameTags } from "../src/node/replica/gmac-native.ts";
import { checksumImplementation, installChecksum } from "../src/replica/checksum.ts";
import { Scenario } from "../test/sim/scenario.ts";
import { median } from "./stats.ts";

const { values } = parseArgs({
  options: {
    writes: { type: "string", default: "20000" },
    rounds: { type: "string", default: "5" },
    iodepth: { type: "string", default: "1" },
    json: { type: "boolean", default: false },
  },
});
const writes = Number(values.writes);
const rounds = Number(values.rounds);
const iodepth = Number(values.iodepth);
if (!(writes >= 1) || !(rounds >= 1) || !(iodepth >= 1 && iodepth <= 64)) throw new Error("--writes and --rounds must be positive, --iodepth 1..64");

// As the daemon does (src/node/replica/replication.ts): the addon where it loads, else the reference.
const crc = fastCrc32c();
if (crc.name === "native") {
  const refused = installChecksum(crc.crc32c, "native");
  if (refused) throw new Error(refused);
}
// Frame tags as the daemon makes them: libcrypto where it loads, node:crypto otherwise.
const tags = installNativeFrameTags();

const blockCount = 4096;
const blocksWritten = 1024; // 4 MiB of the volume, so the activity log stays hot as in a steady run
const scenario = new Scenario({
  blocks: blockCount,
  // The daemon's extent size relative to the block (4 MiB extents of 4 KiB blocks would be 1024
  // blocks): every write finds its extent hot, as a steady workload on a small region does.
  config: { activityLogExtentBytes: 256 * 4096, activityLogExtentsMax: 64, transferLogGranulesMax: 4096 },
  diskLatencyUs: 20,
  metadataLatencyUs: 50,
  networkLatencyUs: 20,
});
// The scenario decodes every frame for its tests; a daemon does not.
scenario.network.tap = undefined;
scenario.waitSynced();

const data = new Uint8Array(4096).fill(0x5a);
let next = 0;
function writeBatch(count: number): void {
  for (let done = 0; done < count; done += iodepth) {
    const ops = [];
    for (let index = 0; index < iodepth && done + index < count; index++) ops.push(scenario.writeBuffer("a", (next++ * 7) % blocksWritten, data, { stable: true }));
    for (const op of ops) scenario.complete(op);
    for (const op of ops) if (op.error || op.info?.mirrored !== true) throw new Error(`a write was not mirrored: ${op.error?.message ?? "completed alone"}`);
  }
}

writeBatch(Math.min(writes, 2000)); // warm up: the JIT, the activity log
const samples: number[] = [];
for (let round = 0; round < rounds; round++) {
  const before = process.cpuUsage();
  writeBatch(writes);
  const used = process.cpuUsage(before);
  samples.push((used.user + used.system) / writes);
}
const result = { iodepth, writes, rounds, checksum: checksumImplementation(), tags: tags.implementation, cpuUsPerWrite: median(samples), minUs: Math.min(...samples), maxUs: Math.max(...samples) };
if (values.json) console.log(JSON.stringify(result));
else console.log(`mirrored 4 KiB writes, iodepth ${iodepth}, ${rounds} rounds of ${writes}: ${result.cpuUsPerWrite.toFixed(1)} µs CPU per write, both nodes and the simulator (${result.minUs.toFixed(1)}–${result.maxUs.toFixed(1)}), CRC32C ${result.checksum}, tags ${result.tags}`);
