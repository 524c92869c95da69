// A layer that can hold a point-in-time view of the volume while IO goes on, for `tandem volume
// copy-out`: between `begin` and `end`, the first write (or trim, or zero) to each chunk copies that
// chunk's old bytes to a side store before it goes down (copy-before-write, as a qcow2 internal
// snapshot or LVM does), and `view()` reads the volume as it was at `begin`: preserved chunks from
// the store, the others from below. Without a session the layer only passes calls down.
//
// Ordering: `begin` must be called while nothing is in flight below (the gate above frozen and
// idle), so the point includes every write completed before it and none after. Per chunk, the
// preservation and a view read of a chunk not yet preserved hold the same range lock, so a view read
// never sees a write that came after the point. Preserved chunks are bounded
// (copyOutPreservedChunksMax): past it the session fails (the view answers EIO) and the volume's
// own IO carries on unaffected.
import type { Payload } from "../../common/bytes.ts";
import { BlockError } from "../../common/errors.ts";
import { copyOutPreserveChunkBytes, copyOutPreservedChunksMax } from "../../constants.ts";
import type { BlockCapabilities, BlockLayer, Extent, WriteFlags, ZeroFlags } from "./layer.ts";
import { PassThroughLayer } from "./layer.ts";
import { RangeLock } from "./range-lock.ts";

interface Session {
  store: BlockLayer;
  sizeBytes: number;
  preserved: Set<number>;
  locks: RangeLock;
  failed: string | undefined;
}

export class PointInTimeLayer extends PassThroughLayer {
  readonly kind = "point-in-time";
  private session: Session | undefined;

  /** Start a view of the volume as it is now; `store` holds preserved chunks (at least the volume's size). */
  begin(store: BlockLayer): void {
    if (this.session) throw new BlockError("EINVAL", "a point-in-time view is already open on this volume");
    const sizeBytes = this.below.size();
    if (store.size() < sizeBytes) throw new BlockError("EINVAL", `the side store (${store.size()} bytes) is smaller than the volume (${sizeBytes})`);
    this.session = { store, sizeBytes, preserved: new Set(), locks: new RangeLock(), failed: undefined };
  }

  /** Stop preserving; returns the side store for the caller to close and remove. */
  end(): BlockLayer | undefined {
    const store = this.session?.store;
    this.session = undefined;
    return store;
  }

  get active(): boolean {
    return this.session !== undefined;
  }

  /** Bytes preserved so far (the side store's use), for status. */
  preservedBytes(): number {
    return (this.session?.preserved.size ?? 0) * copyOutPreserveChunkBytes;
  }

  private async preserve(offset: number, length: number): Promise<void> {
    const session = this.session;
    if (!session || session.failed || length === 0) return;
    const first = Math.floor(offset / copyOutPreserveChunkBytes);
    const last = Math.floor((Math.min(offset + length, session.sizeBytes) - 1) / copyOutPreserveChunkBytes);
    for (let chunk = first; chunk <= last; chunk++) {
      if (session.preserved.has(chunk)) continue;
      const start = chunk * copyOutPreserveChunkBytes;
      const end = Math.min(start + copyOutPreserveChunkBytes, session.sizeBytes);
      const release = await session.locks.acquire(start, end);
      try {
        if (session.preserved.has(chunk) || session.failed || this.session !== session) continue;
        if (session.preserved.size >= copyOutPreservedChunksMax) {
          session.failed = `more than ${copyOutPreservedChunksMax} chunks were written during the copy; start it again at a quieter time`;
          continue;
        }
        const old = new Uint8Array(end - start);
        await this.below.read(start, old);
        await session.store.write(start, old);
        session.preserved.add(chunk);
      } catch (error) {
        // The volume's write still goes down; only the view is lost.
        session.failed = `preserving a chunk failed: ${(error as Error).message}`;
      } finally {
        release();
      }
    }
  }

  // Without a session a write costs nothing here: no extra await on the volume's hot path.
  override write(offset: number, source: Payload, flags?: WriteFlags): Promise<void> {
    if (!this.session) return this.below.write(offset, source, flags);
    return this.preserve(offset, source.length).then(() => this.below.write(offset, source, flags));
  }

  override trim(offset: number, length: number, flags?: WriteFlags): Promise<void> {
    if (!this.session) return this.below.trim(offset, length, flags);
    return this.preserve(offset, length).then(() => this.below.trim(offset, length, flags));
  }

  override zero(offset: number, length: number, flags?: ZeroFlags): Promise<void> {
    if (!this.session) return this.below.zero(offset, length, flags);
    return this.preserve(offset, length).then(() => this.below.zero(offset, length, flags));
  }

  override async resize(sizeBytes: number): Promise<void> {
    if (this.session) throw new BlockError("EINVAL", "the volume cannot be resized while it is being copied out");
    return this.below.resize(sizeBytes);
  }

  /** Read the view: the volume's bytes as they were at `begin`. */
  async readPoint(offset: number, target: Uint8Array): Promise<void> {
    const session = this.session;
    if (!session) throw new BlockError("ESHUTDOWN", "the point-in-time view is closed");
    if (offset + target.length > session.sizeBytes) throw new BlockError("EINVAL", "read past the end of the point-in-time view");
    let done = 0;
    while (done < target.length) {
      if (session.failed) throw new BlockError("EIO", `the point-in-time view is lost: ${session.failed}`);
      const position = offset + done;
      const chunk = Math.floor(position / copyOutPreserveChunkBytes);
      const length = Math.min(target.length - done, (chunk + 1) * copyOutPreserveChunkBytes - position);
      const piece = target.subarray(done, done + length);
      if (session.preserved.has(chunk)) await session.store.read(position, piece);
      else {
        const start = chunk * copyOutPreserveChunkBytes;
        const release = await session.locks.acquire(start, Math.min(start + copyOutPreserveChunkBytes, session.sizeBytes));
        try {
          if (session.preserved.has(chunk)) await session.store.read(position, piece);
          else await this.below.read(position, piece);
        } finally {
          release();
        }
      }
      done += length;
    }
    if (session.failed) throw new BlockError("EIO", `the point-in-time view is lost: ${session.failed}`);
  }

  /** The view as a read-only layer, for an export. */
  view(): BlockLayer {
    const layer = this;
    const sizeBytes = this.session?.sizeBytes ?? 0;
    const refuse = () => Promise.reject(new BlockError("EPERM", "the point-in-time view is read-only"));
    return {
      kind: "point-in-time-view",
      size: () => sizeBytes,
      capabilities: (): BlockCapabilities => ({ readOnly: true, flush: false, fua: false, trim: false, zero: false, fastZero: false, extents: false, multiConn: true, cache: false, alignmentBytes: 512 }),
      read: (offset, target) => layer.readPoint(offset, target),
      write: refuse,
      flush: () => Promise.resolve(),
      trim: refuse,
      zero: refuse,
      cache: () => Promise.resolve(),
      extents: (offset, length): Promise<Extent[]> => Promise.resolve([{ offset, length: Math.min(length, sizeBytes - offset), hole: false, zero: false }]),
      resize: refuse,
      close: () => Promise.resolve(),
    };
  }
}
