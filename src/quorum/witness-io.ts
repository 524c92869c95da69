// Formatting and reading a witness path directly, for `tandem witness format` and `tandem witness
// show PATH` (no daemon needed). Every IO goes through the witness disk's worker with a deadline, so
// a hung witness makes the command fail with a clear message instead of hanging the terminal.
// `format` refuses a path that holds anything but zeros — another cluster's witness, this cluster's
// witness (reformatting forgets who holds the latest data), or any other data — unless forced.
import { TandemError } from "../common/errors.ts";
import { witnessAreaBytes, witnessCommandIoTimeoutMs, witnessProbeBytes, witnessRecordBytes } from "../constants.ts";
import { type QuorumTiming, timingToWitness } from "./config.ts";
import { describeWitness, type WitnessView } from "./describe.ts";
import { DirectWitnessDisk, withDeadline } from "./disk.ts";
import { clusterIdHex, decodeWitness, encodeFormattedArea, superblockCluster, witnessLayout } from "./format.ts";

export interface FormatOptions {
  clusterId: Uint8Array;
  timing: QuorumTiming;
  force: boolean;
  /** Wall-clock time recorded in the superblock (informational). */
  nowMs: number;
  ioTimeoutMs?: number;
  progress?: (step: string) => void;
}

export interface FormatResult {
  path: string;
  cluster: string;
  sizeBytes: number;
  blockDevice: boolean;
  areaBytes: number;
  /** What the path held before: zeros, a witness (which cluster), or other data. */
  previously: string;
  timing: QuorumTiming;
}

function ioError(path: string, error: unknown): TandemError {
  return new TandemError("io_error", `witness ${path}: ${(error as Error).message}`);
}

async function withDisk<T>(path: string, work: (disk: DirectWitnessDisk) => Promise<T>): Promise<T> {
  const disk = new DirectWitnessDisk(path);
  try {
    return await work(disk);
  } finally {
    disk.close();
  }
}

function readBytes(disk: DirectWitnessDisk, offset: number, length: number, timeoutMs: number): Promise<Uint8Array> {
  return withDeadline(`reading ${length} bytes at ${offset}`, timeoutMs, (done) => disk.read(offset / witnessRecordBytes, length / witnessRecordBytes, done));
}

/** What a region holds, as `format` describes it. */
function contentOf(bytes: Uint8Array, offset: number, clusterId: Uint8Array): { kind: "zeros" | "witness" | "data"; description: string } {
  const cluster = offset === 0 ? superblockCluster(bytes) : undefined;
  if (cluster) {
    const same = clusterIdHex(cluster) === clusterIdHex(clusterId);
    const view = describeWitness(bytes.subarray(0, witnessLayout.sectors * witnessRecordBytes), cluster);
    const decided = view.decided ? `, decided version ${view.decided.version}: ${view.decided.summary}` : "";
    return { kind: "witness", description: same ? `this cluster's witness${decided}` : `the witness of another cluster (${clusterIdHex(cluster)})` };
  }
  const first = bytes.findIndex((byte) => byte !== 0);
  return first < 0 ? { kind: "zeros", description: "zeros" } : { kind: "data", description: `data (the first non-zero byte is at offset ${offset + first})` };
}

export async function formatWitness(path: string, options: FormatOptions): Promise<FormatResult> {
  const timeoutMs = options.ioTimeoutMs ?? witnessCommandIoTimeoutMs;
  const progress = options.progress ?? (() => {});
  return withDisk(path, async (disk) => {
    progress(`opening ${path}`);
    let info: { size: number; blockDevice: boolean };
    try {
      info = await withDeadline("opening the witness", timeoutMs, (done) => disk.size(done));
    } catch (error) {
      if ((error as { code?: string }).code === "ENOENT") throw new TandemError("not_found", `${path} does not exist; name a block device, a partition, or a file of at least ${witnessAreaBytes / 1024} KiB (truncate -s 1M ${path})`);
      throw ioError(path, error);
    }
    if (info.size < witnessAreaBytes) throw new TandemError("invalid_argument", `${path} holds ${info.size} bytes; a witness needs at least ${witnessAreaBytes / 1024} KiB`);
    // Look at the start and at the end (partition tables and filesystems keep copies there).
    progress("checking it holds nothing");
    const headLength = Math.floor(Math.min(info.size, witnessProbeBytes) / witnessRecordBytes) * witnessRecordBytes;
    const found: string[] = [];
    let previously = "zeros";
    try {
      const head = contentOf(await readBytes(disk, 0, headLength, timeoutMs), 0, options.clusterId);
      if (head.kind !== "zeros") found.push(head.description);
      const tailStart = Math.floor((info.size - 64 * 1024) / witnessRecordBytes) * witnessRecordBytes;
      if (tailStart >= headLength) {
        const tail = contentOf(await readBytes(disk, tailStart, 64 * 1024, timeoutMs), tailStart, options.clusterId);
        if (tail.kind !== "zeros") found.push(tail.description);
      }
    } catch (error) {
      throw ioError(path, error);
    }
    if (found.length > 0) {
      previously = found.join("; ");
      if (!options.force) {
        throw new TandemError("already_exists", `${path} holds ${previously}; formatting it would destroy that. Check the path, then add --force to format it anyway${found[0]!.startsWith("this cluster's witness") ? " (the nodes forget which of them holds the latest data: do it only while both are connected and in sync)" : ""}`);
      }
    }
    progress("writing the witness area");
    const area = encodeFormattedArea(options.clusterId, { recordBytes: witnessRecordBytes, areaBytes: witnessAreaBytes, formattedAtMs: options.nowMs, timing: timingToWitness(options.timing) });
    try {
      await withDeadline("writing the witness area", timeoutMs, (done) => disk.write(0, area, (error) => done(error)));
      const back = await readBytes(disk, 0, witnessLayout.sectors * witnessRecordBytes, timeoutMs);
      const superblock = decodeWitness(back, options.clusterId).superblock;
      if (!superblock.newest || superblock.copies.some((copy) => copy.state !== "valid")) throw new Error("the superblock read back is not the one written");
    } catch (error) {
      throw ioError(path, error);
    }
    return { path, cluster: clusterIdHex(options.clusterId), sizeBytes: info.size, blockDevice: info.blockDevice, areaBytes: witnessAreaBytes, previously, timing: options.timing };
  });
}

/** Read and decode every record at `path` (cluster from its superblock unless given). */
export async function showWitness(path: string, clusterId?: Uint8Array, ioTimeoutMs = witnessCommandIoTimeoutMs): Promise<WitnessView & { path: string }> {
  return withDisk(path, async (disk) => {
    try {
      const bytes = await readBytes(disk, 0, witnessLayout.sectors * witnessRecordBytes, ioTimeoutMs);
      return { path, ...describeWitness(bytes, clusterId) };
    } catch (error) {
      if ((error as { code?: string }).code === "ENOENT") throw new TandemError("not_found", `${path} does not exist`);
      throw ioError(path, error);
    }
  });
}
