// The in-flight region of one split virtqueue (vhost-user.rst "Inflight I/O tracking", protocol
// feature INFLIGHT_SHMFD). We complete requests out of order, so after a back-end restart the
// available ring alone cannot say which requests were taken but never completed: entries past
// used->idx may have completed and entries before it may not. This region, shared memory that the
// front-end keeps across our restarts, records it: each head is marked in flight (with a fetch
// counter, to resubmit in the original order) when taken, and cleared once its used entry is
// published. A restarted back-end reads it back and resubmits exactly the heads still marked, so
// no request is lost and none is answered twice. Pure: works on a view of the mapped region.
//
// Layout per queue (the format libvhost-user and QEMU's documentation describe):
//   u64 features, u16 version (1), u16 desc_num, u16 last_batch_head, u16 used_idx,
//   then desc_num × { u8 inflight, u8 padding[5], u16 next, u64 counter }.
// Each region is rounded up to 64 bytes so queues do not share a cache line.

const headerBytes = 16;
const entryBytes = 16;
const regionAlignmentBytes = 64;
const version = 1;

export class InflightError extends Error {
  override name = "InflightError";
}

/** Bytes of one queue's region for a queue of `queueSize` entries. */
export function inflightQueueBytes(queueSize: number): number {
  return Math.ceil((headerBytes + entryBytes * queueSize) / regionAlignmentBytes) * regionAlignmentBytes;
}

export class InflightQueue {
  private readonly view: DataView;
  private readonly bytes: Uint8Array;
  private readonly entries16: Uint16Array;
  private readonly queueSize: number;
  private counter = 1;

  constructor(region: Uint8Array, queueSize: number) {
    if (region.length < inflightQueueBytes(queueSize)) throw new InflightError(`in-flight region of ${region.length} bytes is too small for ${queueSize} entries`);
    if (region.byteOffset % 8 !== 0) throw new InflightError("in-flight region is misaligned");
    this.bytes = region;
    this.view = new DataView(region.buffer, region.byteOffset, region.byteLength);
    this.entries16 = new Uint16Array(region.buffer, region.byteOffset, region.byteLength >> 1);
    this.queueSize = queueSize;
  }

  /** Fresh region (GET_INFLIGHT_FD): nothing in flight. */
  static initialize(region: Uint8Array, queueSize: number): void {
    region.fill(0, 0, inflightQueueBytes(queueSize));
    const view = new DataView(region.buffer, region.byteOffset, region.byteLength);
    view.setUint16(8, version, true);
    view.setUint16(10, queueSize, true);
  }

  /**
   * Bring the region in line with the used ring after a restart and list the heads still in
   * flight, oldest first. A back-end that died between publishing a used entry and clearing its
   * in-flight mark leaves used_idx one behind used->idx: that head completed, so its mark is
   * cleared. Also primes the fetch counter past every recorded one.
   */
  recover(usedIndex: number): number[] {
    if (this.view.getUint16(8, true) === 0) InflightQueue.initialize(this.bytes, this.queueSize);
    if (this.view.getUint16(8, true) !== version) throw new InflightError(`in-flight region version ${this.view.getUint16(8, true)} (expected ${version})`);
    const entries = this.view.getUint16(10, true);
    if (entries !== this.queueSize) throw new InflightError(`in-flight region tracks ${entries} entries, the queue has ${this.queueSize}`);
    const recordedUsed = this.view.getUint16(14, true);
    if (recordedUsed !== usedIndex) {
      const batch = (usedIndex - recordedUsed) & 0xffff;
      if (batch === 1) {
        const last = this.view.getUint16(12, true);
        if (last >= this.queueSize) throw new InflightError(`in-flight last batch head ${last} is outside the queue`);
        this.setInflight(last, 0);
      } else if (this.anyInflight()) {
        // We publish one entry at a time, so a live record is never more than one behind. A fresh
        // region (a migrated or reset device) has nothing marked and simply adopts the ring's index.
        throw new InflightError(`used index ${usedIndex} is ${batch} entries past the in-flight record ${recordedUsed}`);
      }
      this.view.setUint16(14, usedIndex, true);
    }
    const heads: { head: number; counter: number }[] = [];
    let highest = 0;
    for (let head = 0; head < this.queueSize; head++) {
      const at = headerBytes + head * entryBytes;
      const marked = this.bytes[at];
      if (marked !== 0 && marked !== 1) throw new InflightError(`in-flight mark of head ${head} is ${marked}`);
      if (marked === 1) {
        const counter = this.readCounter(head);
        heads.push({ head, counter });
        if (counter > highest) highest = counter;
      }
    }
    heads.sort((a, b) => a.counter - b.counter || a.head - b.head);
    this.counter = highest + 1;
    return heads.map((entry) => entry.head);
  }

  /** A head was taken from the available ring (before its request starts). */
  taken(head: number): void {
    const at = headerBytes + head * entryBytes;
    this.view.setUint32(at + 8, this.counter % 0x100000000, true);
    this.view.setUint32(at + 12, Math.floor(this.counter / 0x100000000), true);
    this.counter++;
    this.setInflight(head, 1);
  }

  /** About to publish `head` on the used ring. */
  beforeUsed(head: number): void {
    Atomics.store(this.entries16, 6, head);
  }

  /** Published `head`; the used ring index is now `usedIndex`. */
  afterUsed(head: number, usedIndex: number): void {
    this.setInflight(head, 0);
    Atomics.store(this.entries16, 7, usedIndex);
  }

  private anyInflight(): boolean {
    for (let head = 0; head < this.queueSize; head++) if (this.bytes[headerBytes + head * entryBytes] !== 0) return true;
    return false;
  }

  isInflight(head: number): boolean {
    return this.bytes[headerBytes + head * entryBytes] === 1;
  }

  private readCounter(head: number): number {
    const at = headerBytes + head * entryBytes;
    return this.view.getUint32(at + 8, true) + this.view.getUint32(at + 12, true) * 0x100000000;
  }

  private setInflight(head: number, value: 0 | 1): void {
    Atomics.store(this.bytes, headerBytes + head * entryBytes, value);
  }
}
