// A volume held in memory: the backing layer of codec and export tests that need a real
// BlockLayer without a disk, and a reference for what every layer must do. Sparse: 64 KiB pages
// are allocated on first write, trimmed pages are dropped, so extents report real holes.
import { copyPayload, type Payload } from "../../common/bytes.ts";
import { BlockError } from "../../common/errors.ts";
import type { BlockCapabilities, BlockLayer, Extent, WriteFlags, ZeroFlags } from "./layer.ts";

const pageBytes = 64 * 1024;

export class MemoryLayer implements BlockLayer {
  readonly kind = "memory";
  private readonly pages = new Map<number, Uint8Array>();
  private sizeBytes: number;
  /** Counters tests read to see what reached the bottom of a stack. */
  readonly counters = { reads: 0, writes: 0, flushes: 0, trims: 0, zeroes: 0 };

  constructor(sizeBytes: number, private readonly readOnly = false) {
    this.sizeBytes = sizeBytes;
  }

  size(): number {
    return this.sizeBytes;
  }

  capabilities(): BlockCapabilities {
    return {
      readOnly: this.readOnly,
      flush: true,
      fua: true,
      trim: true,
      zero: true,
      fastZero: true,
      extents: true,
      multiConn: true,
      cache: true,
      alignmentBytes: 512,
    };
  }

  private forEachPage(offset: number, length: number, visit: (page: number, pageOffset: number, bytes: number, done: number) => void): void {
    let done = 0;
    while (done < length) {
      const position = offset + done;
      const page = Math.floor(position / pageBytes);
      const pageOffset = position % pageBytes;
      const bytes = Math.min(pageBytes - pageOffset, length - done);
      visit(page, pageOffset, bytes, done);
      done += bytes;
    }
  }

  async read(offset: number, target: Uint8Array): Promise<void> {
    this.counters.reads++;
    this.forEachPage(offset, target.length, (page, pageOffset, bytes, done) => {
      const data = this.pages.get(page);
      if (data) target.set(data.subarray(pageOffset, pageOffset + bytes), done);
      else target.fill(0, done, done + bytes);
    });
  }

  private checkWritable(): void {
    if (this.readOnly) throw new BlockError("EPERM", "memory volume is read-only");
  }

  async write(offset: number, source: Payload, _flags?: WriteFlags): Promise<void> {
    this.checkWritable();
    this.counters.writes++;
    // Pieces are copied together first: this layer serves tests and demos, not the hot path.
    const bytes = source instanceof Uint8Array ? source : new Uint8Array(source.length);
    if (bytes !== source) copyPayload(source, bytes);
    this.forEachPage(offset, bytes.length, (page, pageOffset, count, done) => {
      let data = this.pages.get(page);
      if (!data) this.pages.set(page, (data = new Uint8Array(pageBytes)));
      data.set(bytes.subarray(done, done + count), pageOffset);
    });
  }

  async flush(): Promise<void> {
    this.counters.flushes++;
  }

  private clear(offset: number, length: number, keepAllocated: boolean): void {
    this.forEachPage(offset, length, (page, pageOffset, bytes) => {
      const data = this.pages.get(page);
      if (!data) return;
      if (bytes === pageBytes && !keepAllocated) this.pages.delete(page);
      else data.fill(0, pageOffset, pageOffset + bytes);
    });
  }

  async trim(offset: number, length: number, _flags?: WriteFlags): Promise<void> {
    this.checkWritable();
    this.counters.trims++;
    this.clear(offset, length, false);
  }

  async zero(offset: number, length: number, flags?: ZeroFlags): Promise<void> {
    this.checkWritable();
    this.counters.zeroes++;
    this.clear(offset, length, flags?.noHole === true);
  }

  async cache(_offset: number, _length: number): Promise<void> {}

  async extents(offset: number, length: number): Promise<Extent[]> {
    const extents: Extent[] = [];
    this.forEachPage(offset, length, (page, _pageOffset, bytes, done) => {
      const hole = !this.pages.has(page);
      const last = extents[extents.length - 1];
      if (last && last.hole === hole) last.length += bytes;
      else extents.push({ offset: offset + done, length: bytes, hole, zero: hole });
    });
    return extents;
  }

  async resize(sizeBytes: number): Promise<void> {
    if (sizeBytes < this.sizeBytes) {
      for (const page of this.pages.keys()) if (page * pageBytes >= sizeBytes) this.pages.delete(page);
    }
    this.sizeBytes = sizeBytes;
  }

  async close(): Promise<void> {}
}
