// The production adapters behind the replica driver's IO interfaces (src/replica/io.ts): a volume's
// BlockLayer stack as BlockStorage, a small metadata file as MetadataStore, the process clock and
// the operating system's random source. They live with the daemon, not the pure cores.
import type { Payload } from "../../common/bytes.ts";
import { BlockError, type BlockErrorCode } from "../../common/errors.ts";
import type { BlockStorage, Clock, IoCallback, MetadataStore, Random } from "../../replica/io.ts";
import type { IoError } from "../../replica/types.ts";
import { emulating } from "../block/emulate.ts";
import type { BlockLayer } from "../block/layer.ts";

/** The replica core's IO error for what a BlockLayer threw. */
export function ioErrorOf(error: unknown): IoError {
  if (error instanceof BlockError) return error.code;
  const code = (error as { code?: string })?.code;
  const known: BlockErrorCode[] = ["EIO", "ENOSPC", "EINVAL", "EPERM", "EOVERFLOW", "ENOTSUP", "ESHUTDOWN"];
  return known.includes(code as BlockErrorCode) ? (code as BlockErrorCode) : "EIO";
}

function settle(promise: Promise<void>, done: IoCallback): void {
  promise.then(
    () => done(null),
    (error) => done(ioErrorOf(error)),
  );
}

/** A volume's BlockLayer stack below the mirror (file or device layer) as BlockStorage. */
export class BlockLayerStorage implements BlockStorage {
  /** FUA, zeroes and trims as the core asks them, whatever the layer offers (emulate.ts). */
  private readonly layer: BlockLayer;
  constructor(layer: BlockLayer) {
    this.layer = emulating(layer);
  }
  read(offset: number, target: Uint8Array, done: IoCallback): void {
    settle(this.layer.read(offset, target), done);
  }
  /**
   * Writes, trims and zeroes start after what this turn has already queued to run next, among it
   * the replication link's flush of this turn's sends (TcpPeerTransport.send): the core sends a
   * mirrored write to the peer before it issues the local copy, and a page-cache write is a
   * synchronous pwrite, which would otherwise hold the frame back for its whole duration. So the
   * peer decodes, writes and answers while this node writes its own copy. Data in pieces (a large
   * frame received, a client's payload) goes down as it is: the layer writes it piece by piece, or
   * copies it together where it needs one aligned buffer (FileLayer).
   */
  write(offset: number, data: Payload, fua: boolean, done: IoCallback): void {
    queueMicrotask(() => settle(this.layer.write(offset, data, { fua }), done));
  }
  flush(done: IoCallback): void {
    settle(this.layer.flush(), done);
  }
  trim(offset: number, length: number, fua: boolean, done: IoCallback): void {
    queueMicrotask(() => settle(this.layer.trim(offset, length, { fua }), done));
  }
  zero(offset: number, length: number, fua: boolean, noHole: boolean, done: IoCallback): void {
    queueMicrotask(() => settle(this.layer.zero(offset, length, { fua, noHole }), done));
  }
}

/** A metadata area kept in a BlockLayer (a small FileLayer next to the volume's backing file). */
export class BlockLayerMetadataStore implements MetadataStore {
  constructor(private readonly layer: BlockLayer) {}
  sizeBytes(): number {
    return this.layer.size();
  }
  read(offset: number, length: number, done: (error: IoError | null, bytes: Uint8Array | undefined) => void): void {
    const target = new Uint8Array(length);
    this.layer.read(offset, target).then(
      () => done(null, target),
      (error) => done(ioErrorOf(error), undefined),
    );
  }
  write(offset: number, bytes: Uint8Array, done: IoCallback): void {
    settle(this.layer.write(offset, bytes), done);
  }
  flush(done: IoCallback): void {
    settle(this.layer.flush(), done);
  }
}

/** The process's monotonic clock. */
export const systemClock: Clock = {
  now: () => performance.now(),
  after(delayMs, callback) {
    const timer = setTimeout(callback, delayMs);
    return { cancel: () => clearTimeout(timer) };
  },
};

/** The operating system's random source. */
export const systemRandom: Random = {
  fill(bytes) {
    crypto.getRandomValues(bytes);
  },
};
