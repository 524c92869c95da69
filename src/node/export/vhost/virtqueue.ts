// One split virtqueue seen from the device side (virtio 1.1 §2.6): take heads from the available
// ring, walk their descriptor chains (direct or through one indirect table) into views of guest
// memory, put completed heads on the used ring, and decide — with or without event index — when
// the driver must be notified and up to where it need not kick us. Pure: the rings are views given
// by the caller and buffers are translated through a GuestMemory; nothing here does IO. Everything
// the guest wrote is validated (indexes, addresses, lengths, loops, flag combinations) and a
// violation is a QueueError, which ends the session: a driver that writes such rings is broken or
// hostile, and continuing could touch memory it never offered.
//
// Shared-memory ordering: the available index is read with Atomics.load before the entries it
// covers, the used index is written with Atomics.store after the element it publishes, and the
// event-index fields are re-read after our own store, so the JIT cannot reorder these accesses and
// the host CPU sees them in program order (x86 TSO; the Atomics are full barriers).
import type { GuestMemory } from "./memory.ts";

export class QueueError extends Error {
  override name = "QueueError";
}

const descriptorBytes = 16;
const enum DescriptorFlag {
  Next = 1, // VIRTQ_DESC_F_NEXT
  Write = 2, // VIRTQ_DESC_F_WRITE
  Indirect = 4, // VIRTQ_DESC_F_INDIRECT
}
const availableNoInterrupt = 1; // VIRTQ_AVAIL_F_NO_INTERRUPT

/** Bytes of each ring area for a queue of `size` entries (with the event-index words). */
export function queueAreaBytes(size: number, eventIndex: boolean): { descriptors: number; available: number; used: number } {
  const event = eventIndex ? 2 : 0;
  return { descriptors: descriptorBytes * size, available: 4 + 2 * size + event, used: 4 + 8 * size + event };
}

/** Required alignment of each ring area (virtio 1.1 §2.6). */
export const queueAreaAlignment = { descriptors: 16, available: 2, used: 4 } as const;

export interface QueueAreas {
  descriptors: Uint8Array;
  available: Uint8Array;
  used: Uint8Array;
}

export interface QueueOptions {
  size: number;
  eventIndex: boolean;
  indirect: boolean;
  /** Most entries one indirect table may have. */
  indirectDescriptorsMax: number;
}

/** A descriptor chain as views of guest memory, device-readable ones first. */
export interface Chain {
  head: number;
  readable: Uint8Array[];
  writable: Uint8Array[];
  readableBytes: number;
  writableBytes: number;
  /** Descriptors visited (the indirect descriptor itself included). */
  descriptors: number;
}

/** vring_need_event: did the index move past `event` when it went from `previous` to `next`? */
export function needsEvent(event: number, next: number, previous: number): boolean {
  return ((next - event - 1) & 0xffff) < ((next - previous) & 0xffff);
}

export class SplitQueue {
  readonly size: number;
  private readonly eventIndex: boolean;
  private readonly indirect: boolean;
  private readonly indirectDescriptorsMax: number;
  private descriptors!: DataView;
  private available16!: Uint16Array;
  private used16!: Uint16Array;
  private used32!: Uint32Array;
  /** Next available-ring position to take (free-running 16-bit counter). */
  private nextAvailable: number;
  /** Our shadow of used->idx: the next used-ring position to fill. */
  private nextUsed: number;
  /** used->idx when the driver was last notified; undefined until the first notification. */
  private signalledUsed: number | undefined;

  constructor(options: QueueOptions, areas: QueueAreas, nextAvailable: number) {
    const { size } = options;
    if (size < 1 || (size & (size - 1)) !== 0 || size > 32768) throw new QueueError(`queue size ${size} is not a power of two in 1..32768`);
    this.size = size;
    this.eventIndex = options.eventIndex;
    this.indirect = options.indirect;
    this.indirectDescriptorsMax = options.indirectDescriptorsMax;
    this.remap(areas);
    this.nextAvailable = nextAvailable & 0xffff;
    this.nextUsed = Atomics.load(this.used16, 1);
    this.signalledUsed = undefined;
  }

  /** Point at new views of the same rings (after the front-end replaced the memory table). */
  remap(areas: QueueAreas): void {
    const expected = queueAreaBytes(this.size, this.eventIndex);
    if (areas.descriptors.length < expected.descriptors || areas.available.length < expected.available || areas.used.length < expected.used) {
      throw new QueueError("ring areas are smaller than the queue size needs");
    }
    if (areas.descriptors.byteOffset % 4 !== 0 || areas.available.byteOffset % 2 !== 0 || areas.used.byteOffset % 4 !== 0) {
      throw new QueueError("ring areas are misaligned");
    }
    this.descriptors = new DataView(areas.descriptors.buffer, areas.descriptors.byteOffset, expected.descriptors);
    this.available16 = new Uint16Array(areas.available.buffer, areas.available.byteOffset, expected.available / 2);
    this.used16 = new Uint16Array(areas.used.buffer, areas.used.byteOffset, expected.used / 2);
    this.used32 = new Uint32Array(areas.used.buffer, areas.used.byteOffset, Math.floor(expected.used / 4));
  }

  /** Continue from another available-ring position (in-flight recovery after a restart). */
  restartAt(nextAvailable: number): void {
    this.nextAvailable = nextAvailable & 0xffff;
  }

  /** The next available-ring position we will take (what GET_VRING_BASE reports). */
  get nextAvailableIndex(): number {
    return this.nextAvailable;
  }

  /** used->idx as we last wrote it. */
  get usedIndex(): number {
    return this.nextUsed;
  }

  /** used->idx as it is in guest memory now. */
  usedIndexInMemory(): number {
    return Atomics.load(this.used16, 1);
  }

  /** Heads the driver has made available that we have not taken. Throws if the driver claims more than the ring holds. */
  pending(): number {
    const count = (Atomics.load(this.available16, 1) - this.nextAvailable) & 0xffff;
    if (count > this.size) throw new QueueError(`available index moved ${count} entries ahead of a ${this.size}-entry queue`);
    return count;
  }

  /** Take the next available head. Call only when `pending()` is non-zero. */
  take(): number {
    const head = this.available16[2 + (this.nextAvailable % this.size)]!;
    if (head >= this.size) throw new QueueError(`available ring entry ${this.nextAvailable} names descriptor ${head} of a ${this.size}-entry table`);
    this.nextAvailable = (this.nextAvailable + 1) & 0xffff;
    return head;
  }

  /**
   * Walk the chain starting at descriptor `head` into views of guest memory. Throws QueueError on
   * an index outside the table, a loop, an unmapped or overflowing buffer, a bad indirect table,
   * or a device-readable descriptor after a device-writable one.
   */
  walk(head: number, memory: GuestMemory): Chain {
    const chain: Chain = { head, readable: [], writable: [], readableBytes: 0, writableBytes: 0, descriptors: 0 };
    let table = this.descriptors;
    let tableSize = this.size;
    let index = head;
    let visited = 0;
    let inIndirect = false;
    for (;;) {
      if (index >= tableSize) throw new QueueError(`descriptor chain from ${head} names descriptor ${index} of a ${tableSize}-entry ${inIndirect ? "indirect table" : "table"}`);
      if (++visited > tableSize) throw new QueueError(`descriptor chain from ${head} is longer than its ${tableSize}-entry table: a loop`);
      chain.descriptors++;
      const at = index * descriptorBytes;
      const low = table.getUint32(at, true);
      const high = table.getUint32(at + 4, true);
      const length = table.getUint32(at + 8, true);
      const flags = table.getUint16(at + 12, true);
      const next = table.getUint16(at + 14, true);
      if (high >= 0x200000) throw new QueueError(`descriptor ${index} of chain ${head} has address 0x${high.toString(16)}${low.toString(16).padStart(8, "0")} beyond guest memory`);
      const address = high * 0x100000000 + low;
      if (flags & DescriptorFlag.Indirect) {
        if (!this.indirect) throw new QueueError(`chain ${head} uses an indirect table, which was not negotiated`);
        if (inIndirect) throw new QueueError(`chain ${head} nests an indirect table inside another`);
        if (visited !== 1) throw new QueueError(`chain ${head} has an indirect table after other descriptors`);
        if (flags & DescriptorFlag.Next) throw new QueueError(`chain ${head}: an indirect descriptor must not also chain to a next one`);
        if (length === 0 || length % descriptorBytes !== 0) throw new QueueError(`chain ${head}: indirect table of ${length} bytes is not a whole number of descriptors`);
        const entries = length / descriptorBytes;
        if (entries > this.indirectDescriptorsMax) throw new QueueError(`chain ${head}: indirect table of ${entries} descriptors (at most ${this.indirectDescriptorsMax})`);
        const view = memory.guestView(address, length);
        if (!view) throw new QueueError(`chain ${head}: indirect table at 0x${address.toString(16)}+${length} is outside guest memory`);
        table = new DataView(view.buffer, view.byteOffset, view.byteLength);
        tableSize = entries;
        index = 0;
        visited = 0;
        inIndirect = true;
        continue;
      }
      const writable = (flags & DescriptorFlag.Write) !== 0;
      if (!writable && chain.writable.length > 0) throw new QueueError(`chain ${head} has a device-readable descriptor after a device-writable one`);
      if (length > 0) {
        const target = writable ? chain.writable : chain.readable;
        if (!memory.guestViews(address, length, target)) throw new QueueError(`chain ${head}: buffer at 0x${address.toString(16)}+${length} is outside guest memory`);
        if (writable) chain.writableBytes += length;
        else chain.readableBytes += length;
      }
      if (!(flags & DescriptorFlag.Next)) return chain;
      index = next;
    }
  }

  /** Publish a completed head with the number of bytes the device wrote into its buffers. */
  putUsed(head: number, writtenBytes: number): void {
    const slot = this.nextUsed % this.size;
    this.used32[1 + 2 * slot] = head;
    this.used32[2 + 2 * slot] = writtenBytes;
    this.nextUsed = (this.nextUsed + 1) & 0xffff;
    Atomics.store(this.used16, 1, this.nextUsed);
  }

  /**
   * Whether the driver wants an interrupt for the used entries published since the last one, and
   * record that it got it. Without event index, the driver's NO_INTERRUPT flag decides.
   */
  takeNotification(): boolean {
    const next = this.nextUsed;
    const previous = this.signalledUsed;
    if (previous === next) return false;
    this.signalledUsed = next;
    if (!this.eventIndex) return (Atomics.load(this.available16, 0) & availableNoInterrupt) === 0;
    if (previous === undefined) return true;
    const usedEvent = Atomics.load(this.available16, 2 + this.size);
    return needsEvent(usedEvent, next, previous);
  }

  /**
   * Ask the driver to kick when it makes the next entry available (event index: avail_event =
   * our next position), then return whether entries arrived meanwhile (so the caller keeps going
   * instead of waiting for a kick that will not come).
   */
  armKick(): boolean {
    if (this.eventIndex) Atomics.store(this.used16, 2 + 4 * this.size, this.nextAvailable);
    return this.pending() > 0;
  }
}
