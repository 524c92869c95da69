// The guest memory table of one vhost-user session: the regions the front-end shared with
// SET_MEM_TABLE, each reachable by guest-physical address (descriptor buffers) and by the
// front-end's own virtual address (ring addresses in SET_VRING_ADDR). Translation hands out views
// straight onto the shared memory, so guest data is never copied. Pure: a region's bytes come from
// a `slice` function — the driver backs it with an mmap of the region's fd, tests with a plain
// Uint8Array — and every address a guest can supply is checked here before any byte is touched.

export interface RegionBytes {
  /** A view of [offset, offset + length) of the region; the caller has checked the bounds. */
  slice(offset: number, length: number): Uint8Array;
}

export interface MemoryRegion {
  guestAddress: number;
  sizeBytes: number;
  userAddress: number;
  bytes: RegionBytes;
}

export class MemoryTableError extends Error {
  override name = "MemoryTableError";
}

function overlaps(aStart: number, aSize: number, bStart: number, bSize: number): boolean {
  return aStart < bStart + bSize && bStart < aStart + aSize;
}

export class GuestMemory {
  private readonly regions: readonly MemoryRegion[];
  /** Index of the region that satisfied the last guest lookup: consecutive buffers are usually in one region. */
  private lastGuest = 0;

  constructor(regions: readonly MemoryRegion[]) {
    for (const [index, region] of regions.entries()) {
      if (!(region.sizeBytes > 0)) throw new MemoryTableError(`region ${index} is empty`);
      for (const [name, start] of [["guest", region.guestAddress], ["user", region.userAddress]] as const) {
        if (!Number.isSafeInteger(start) || start < 0 || !Number.isSafeInteger(start + region.sizeBytes)) {
          throw new MemoryTableError(`region ${index} ${name} range ${start}+${region.sizeBytes} is not addressable`);
        }
      }
      for (let other = 0; other < index; other++) {
        const previous = regions[other]!;
        if (overlaps(region.guestAddress, region.sizeBytes, previous.guestAddress, previous.sizeBytes)) {
          throw new MemoryTableError(`regions ${other} and ${index} overlap in guest physical memory`);
        }
        if (overlaps(region.userAddress, region.sizeBytes, previous.userAddress, previous.sizeBytes)) {
          throw new MemoryTableError(`regions ${other} and ${index} overlap in front-end memory`);
        }
      }
    }
    this.regions = [...regions];
  }

  get regionCount(): number {
    return this.regions.length;
  }

  private findGuest(address: number): MemoryRegion | undefined {
    const cached = this.regions[this.lastGuest];
    if (cached && address >= cached.guestAddress && address < cached.guestAddress + cached.sizeBytes) return cached;
    for (let index = 0; index < this.regions.length; index++) {
      const region = this.regions[index]!;
      if (address >= region.guestAddress && address < region.guestAddress + region.sizeBytes) {
        this.lastGuest = index;
        return region;
      }
    }
    return undefined;
  }

  /**
   * One view of guest-physical [address, address + length), which must lie inside one region (ring
   * structures, descriptor tables, request headers). Undefined when any byte is not guest memory.
   */
  guestView(address: number, length: number): Uint8Array | undefined {
    if (!Number.isSafeInteger(address) || !Number.isSafeInteger(length) || address < 0 || length < 0) return undefined;
    const region = this.findGuest(address);
    if (!region) return undefined;
    const offset = address - region.guestAddress;
    if (length > region.sizeBytes - offset) return undefined;
    return region.bytes.slice(offset, length);
  }

  /**
   * Views covering guest-physical [address, address + length), appended to `out`: one per region
   * the range crosses (regions that are adjacent in guest memory may be separate mappings). False
   * when any byte is not guest memory; `out` may then hold part of the range.
   */
  guestViews(address: number, length: number, out: Uint8Array[]): boolean {
    if (!Number.isSafeInteger(address) || !Number.isSafeInteger(length) || address < 0 || length < 0) return false;
    let position = address;
    let remaining = length;
    while (remaining > 0) {
      const region = this.findGuest(position);
      if (!region) return false;
      const offset = position - region.guestAddress;
      const bytes = Math.min(remaining, region.sizeBytes - offset);
      out.push(region.bytes.slice(offset, bytes));
      position += bytes;
      remaining -= bytes;
    }
    return true;
  }

  /** A view of front-end virtual [address, address + length) inside one region (SET_VRING_ADDR). */
  userView(address: number, length: number): Uint8Array | undefined {
    if (!Number.isSafeInteger(address) || !Number.isSafeInteger(length) || address < 0 || length < 0) return undefined;
    for (const region of this.regions) {
      if (address >= region.userAddress && address < region.userAddress + region.sizeBytes) {
        const offset = address - region.userAddress;
        if (length > region.sizeBytes - offset) return undefined;
        return region.bytes.slice(offset, length);
      }
    }
    return undefined;
  }
}
