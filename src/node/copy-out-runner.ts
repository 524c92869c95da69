// The operator's side of a copy-out (`tandem volume copy-out NAME TARGET`), run where the CLI runs
// (on the node): ask the daemon for a point of the volume (src/node/copy-out.ts), copy the
// point-in-time NBD export to TARGET with `qemu-img convert` (so TARGET is anything QEMU's block
// layer writes: a file, an NBD server, `rbd:pool/image`, a LINSTOR/DRBD device), then read both back
// (`nbdcopy`, with `qemu-nbd` opening the target through the same block layer) and compare SHA-256
// checksums per chunk and overall, and end the session. The checksums compare the target with the
// volume AS OF THE POINT: writes after it are not in the copy, by design.
import fs from "node:fs";
import { TandemError } from "../common/errors.ts";
import { copyOutChecksumChunkBytes, copyOutReaderExcessBytesMax } from "../constants.ts";
import type { ControlClient } from "./control/client.ts";
import type { CopyOutInfo } from "./copy-out.ts";

export interface CopyOutOptions {
  volume: string;
  target: string;
  /** qemu-img's output format for a target it creates or opens (raw unless told). */
  targetFormat: string;
  /** The target exists (an rbd image, say): write into it instead of creating it. */
  targetExists: boolean;
}

export interface CopyOutResult {
  volume: string;
  target: string;
  targetFormat: string;
  point: string;
  pointMs: number;
  sizeBytes: number;
  /** Bytes written to the volume during the copy (kept aside so the copy stays at the point). */
  preservedBytes: number;
  copySeconds: number;
  checksum: { algorithm: "sha256"; chunkBytes: number; source: string; target: string; match: boolean; differingChunks: number; firstDifferenceOffset: number | null };
}

export type CopyOutPhase = { kind: "point" } | { kind: "copy"; fraction: number } | { kind: "compare"; fraction: number };

/** Whether TARGET names something qemu-img must not create: an NBD URI, or an existing file or device. */
export function targetExists(target: string, forced: boolean): boolean {
  if (forced || /^nbd(\+unix|\+tcp)?:\/\//.test(target)) return true;
  if (/^[a-z][a-z0-9+.-]*:/.test(target)) return false; // a QEMU protocol (rbd:, iscsi://): created unless told
  return fs.existsSync(target);
}

function requireTool(name: string, debianPackage: string): void {
  if (!Bun.which(name)) throw new TandemError("failed_precondition", `${name} is not installed; copy-out needs it (apt-get install ${debianPackage})`);
}

/** Run qemu-img convert, reporting its progress; rejects with its stderr when it fails. */
async function convert(source: string, options: CopyOutOptions, onFraction: (fraction: number) => void): Promise<void> {
  const args = ["qemu-img", "convert", "-p", "-f", "raw", "-O", options.targetFormat];
  if (targetExists(options.target, options.targetExists)) args.push("-n");
  args.push(source, options.target);
  const child = Bun.spawn(args, { stdout: "pipe", stderr: "pipe" });
  const stderr = new Response(child.stderr).text();
  const decoder = new TextDecoder();
  for await (const chunk of child.stdout) {
    const matches = [...decoder.decode(chunk).matchAll(/\((\d+(?:\.\d+)?)\/100%\)/g)];
    const last = matches.at(-1);
    if (last) onFraction(Number(last[1]) / 100);
  }
  const code = await child.exited;
  if (code !== 0) throw new TandemError("io_error", `qemu-img convert to ${options.target} failed (exit ${code}): ${(await stderr).trim()}`);
}

interface Digest {
  overall: string;
  chunks: string[];
}

/**
 * SHA-256 of the first `sizeBytes` a reader command writes to stdout, overall and per chunk. The
 * reader is read to its end and left to exit by itself: nbdcopy with a captive qemu-nbd (libnbd's
 * socket activation) removes its socket directory under /tmp as it exits, and a reader killed after
 * its last byte left that directory behind. What a reader writes beyond `sizeBytes` is read and
 * ignored, up to copyOutReaderExcessBytesMax (then it is stopped).
 */
export async function digestOf(command: string[], sizeBytes: number, what: string, onBytes: (bytes: number) => void): Promise<Digest> {
  const child = Bun.spawn(command, { stdout: "pipe", stderr: "pipe" });
  const stderr = new Response(child.stderr).text();
  const overall = new Bun.CryptoHasher("sha256");
  const chunks: string[] = [];
  let chunk = new Bun.CryptoHasher("sha256");
  let inChunk = 0;
  let total = 0;
  let excess = 0;
  for await (const data of child.stdout) {
    let piece = data.subarray(0, Math.max(0, sizeBytes - total));
    const taken = piece.length;
    total += taken;
    excess += data.length - taken;
    overall.update(piece);
    while (piece.length > 0) {
      const take = Math.min(piece.length, copyOutChecksumChunkBytes - inChunk);
      chunk.update(piece.subarray(0, take));
      inChunk += take;
      piece = piece.subarray(take);
      if (inChunk === copyOutChecksumChunkBytes) {
        chunks.push(chunk.digest("hex"));
        chunk = new Bun.CryptoHasher("sha256");
        inChunk = 0;
      }
    }
    if (taken > 0) onBytes(total);
    if (excess > copyOutReaderExcessBytesMax) {
      child.kill();
      break;
    }
  }
  if (inChunk > 0) chunks.push(chunk.digest("hex"));
  const code = await child.exited;
  if (total < sizeBytes) throw new TandemError("io_error", `reading ${what} gave ${total} of ${sizeBytes} bytes (exit ${code}): ${(await stderr).trim()}`);
  return { overall: overall.digest("hex"), chunks };
}

/** The command that writes the target's bytes, read through QEMU's block layer, to stdout. */
function targetReader(options: CopyOutOptions): string[] {
  if (/^nbd(\+unix|\+tcp)?:\/\//.test(options.target)) return ["nbdcopy", options.target, "-"];
  return ["nbdcopy", "--", "[", "qemu-nbd", "-r", "-f", options.targetFormat, options.target, "]", "-"];
}

export async function runCopyOut(client: ControlClient, options: CopyOutOptions, onPhase: (phase: CopyOutPhase) => void): Promise<CopyOutResult> {
  requireTool("qemu-img", "qemu-utils");
  requireTool("qemu-nbd", "qemu-utils");
  requireTool("nbdcopy", "libnbd-bin");
  const status = await client.status();
  onPhase({ kind: "point" });
  const session = await client.request<CopyOutInfo>("POST", `/volumes/${encodeURIComponent(options.volume)}/copy-out`);
  try {
    // Volume names and session ids are URI-safe ([a-z0-9_.-], "@" is allowed in a URI path).
    const source = `nbd+unix:///${session.export}?socket=${status.node.nbdSocket}`;
    const started = performance.now();
    await convert(source, options, (fraction) => onPhase({ kind: "copy", fraction }));
    const copySeconds = (performance.now() - started) / 1000;
    const read = { source: 0, target: 0 };
    const report = () => onPhase({ kind: "compare", fraction: (read.source + read.target) / (2 * session.sizeBytes) });
    const [sourceDigest, targetDigest] = await Promise.all([
      digestOf(["nbdcopy", source, "-"], session.sizeBytes, "the volume's point-in-time view", (bytes) => ((read.source = bytes), report())),
      digestOf(targetReader(options), session.sizeBytes, options.target, (bytes) => ((read.target = bytes), report())),
    ]);
    const differing = sourceDigest.chunks.flatMap((digest, index) => (digest === targetDigest.chunks[index] ? [] : [index]));
    const finished = await client.request<CopyOutInfo>("GET", `/copy-outs/${session.id}`);
    return {
      volume: options.volume,
      target: options.target,
      targetFormat: options.targetFormat,
      point: new Date(session.pointMs).toISOString(),
      pointMs: session.pointMs,
      sizeBytes: session.sizeBytes,
      preservedBytes: finished.preservedBytes,
      copySeconds,
      checksum: {
        algorithm: "sha256",
        chunkBytes: copyOutChecksumChunkBytes,
        source: sourceDigest.overall,
        target: targetDigest.overall,
        match: sourceDigest.overall === targetDigest.overall,
        differingChunks: differing.length,
        firstDifferenceOffset: differing.length > 0 ? differing[0]! * copyOutChecksumChunkBytes : null,
      },
    };
  } finally {
    await client.request("DELETE", `/copy-outs/${session.id}`).catch(() => {});
  }
}
