// Proves the pure split-virtqueue and guest-memory modules (virtqueue.ts, memory.ts) over plain
// arrays standing in for guest RAM: chains are walked into views of exactly the bytes the driver
// offered (direct, indirect, across two memory regions), the used ring is laid out as virtio 1.1
// §2.6 says, event-index notification and kick arming follow vring_need_event, and every malformed
// ring — bad index, loop, unmapped or overflowing buffer, bad indirect table, readable after
// writable, an available index that runs ahead of the ring — is a QueueError.
import { describe, expect, test } from "bun:test";
import { GuestMemory, MemoryTableError, type MemoryRegion } from "../../src/node/export/vhost/memory.ts";
import { QueueError, SplitQueue, needsEvent, queueAreaBytes, type QueueAreas } from "../../src/node/export/vhost/virtqueue.ts";

const NEXT = 1;
const WRITE = 2;
const INDIRECT = 4;

/** 1 MiB of "guest RAM" as two regions (0..512K, 512K..1M), user addresses elsewhere. */
function makeMemory() {
  const ram = new Uint8Array(1 << 20);
  const half = ram.length / 2;
  const regions: MemoryRegion[] = [
    { guestAddress: 0, sizeBytes: half, userAddress: 0x10_0000_0000, bytes: { slice: (o, l) => ram.subarray(o, o + l) } },
    { guestAddress: half, sizeBytes: half, userAddress: 0x20_0000_0000, bytes: { slice: (o, l) => ram.subarray(half + o, half + o + l) } },
  ];
  return { ram, memory: new GuestMemory(regions), half };
}

function makeQueue(options: { size?: number; eventIndex?: boolean; indirect?: boolean } = {}) {
  const size = options.size ?? 8;
  const { ram, memory, half } = makeMemory();
  const sizes = queueAreaBytes(size, true);
  const descriptorsAt = 0x1000;
  const availableAt = 0x2000;
  const usedAt = 0x3000;
  const areas: QueueAreas = {
    descriptors: ram.subarray(descriptorsAt, descriptorsAt + sizes.descriptors),
    available: ram.subarray(availableAt, availableAt + sizes.available),
    used: ram.subarray(usedAt, usedAt + sizes.used),
  };
  const queue = new SplitQueue({ size, eventIndex: options.eventIndex ?? false, indirect: options.indirect ?? true, indirectDescriptorsMax: 16 }, areas, 0);
  const view = new DataView(ram.buffer);
  const descriptor = (table: number, index: number, address: number, length: number, flags: number, next = 0) => {
    const at = table + 16 * index;
    view.setBigUint64(at, BigInt(address), true);
    view.setUint32(at + 8, length, true);
    view.setUint16(at + 12, flags, true);
    view.setUint16(at + 14, next, true);
  };
  let availableIndex = 0;
  const offer = (...heads: number[]) => {
    for (const head of heads) view.setUint16(availableAt + 4 + 2 * (availableIndex++ % size), head, true);
    view.setUint16(availableAt + 2, availableIndex & 0xffff, true);
  };
  return { ram, memory, half, queue, view, size, descriptor, offer, descriptorsAt, availableAt, usedAt };
}

describe("guest memory", () => {
  test("translates guest and user addresses to views of the right bytes", () => {
    const { ram, memory, half } = makeMemory();
    ram[half + 10] = 0xab;
    expect(memory.guestView(half + 10, 1)![0]).toBe(0xab);
    expect(memory.userView(0x20_0000_0000 + 10, 1)![0]).toBe(0xab);
    memory.guestView(half + 10, 1)![0] = 0xcd;
    expect(ram[half + 10]).toBe(0xcd);
  });

  test("a buffer across two regions comes back as two views; a single view must not cross", () => {
    const { memory, half } = makeMemory();
    const out: Uint8Array[] = [];
    expect(memory.guestViews(half - 100, 300, out)).toBe(true);
    expect(out.map((v) => v.length)).toEqual([100, 200]);
    expect(memory.guestView(half - 100, 300)).toBeUndefined();
  });

  test("unmapped, overflowing, negative and unsafe ranges are refused", () => {
    const { memory } = makeMemory();
    expect(memory.guestView(1 << 20, 1)).toBeUndefined();
    expect(memory.guestView((1 << 20) - 1, 2)).toBeUndefined();
    expect(memory.guestViews((1 << 20) - 1, 2, [])).toBe(false);
    expect(memory.guestView(-1, 1)).toBeUndefined();
    expect(memory.guestView(2 ** 60, 1)).toBeUndefined();
    expect(memory.userView(0x10_0000_0000 - 1, 1)).toBeUndefined();
  });

  test("overlapping or empty regions make no table", () => {
    const bytes = { slice: () => new Uint8Array(0) };
    expect(() => new GuestMemory([{ guestAddress: 0, sizeBytes: 0, userAddress: 0, bytes }])).toThrow(MemoryTableError);
    expect(
      () =>
        new GuestMemory([
          { guestAddress: 0, sizeBytes: 4096, userAddress: 0, bytes },
          { guestAddress: 4095, sizeBytes: 4096, userAddress: 8192, bytes },
        ]),
    ).toThrow(MemoryTableError);
  });
});

describe("split queue", () => {
  test("takes heads in order and walks a direct chain into views of the offered bytes", () => {
    const q = makeQueue();
    q.ram.fill(7, 0x10000, 0x10010);
    q.descriptor(q.descriptorsAt, 3, 0x10000, 16, NEXT, 5);
    q.descriptor(q.descriptorsAt, 5, 0x20000, 4096, WRITE | NEXT, 6);
    q.descriptor(q.descriptorsAt, 6, 0x30000, 1, WRITE);
    q.offer(3);
    expect(q.queue.pending()).toBe(1);
    const head = q.queue.take();
    expect(head).toBe(3);
    const chain = q.queue.walk(head, q.memory);
    expect(chain.readable.map((v) => v.length)).toEqual([16]);
    expect(chain.readable[0]![0]).toBe(7);
    expect(chain.writable.map((v) => v.length)).toEqual([4096, 1]);
    expect(chain.readableBytes).toBe(16);
    expect(chain.writableBytes).toBe(4097);
    chain.writable[1]![0] = 0x42;
    expect(q.ram[0x30000]).toBe(0x42);
    expect(q.queue.pending()).toBe(0);
  });

  test("a buffer across the region boundary is split into two views", () => {
    const q = makeQueue();
    q.descriptor(q.descriptorsAt, 0, q.half - 512, 1024, WRITE);
    q.offer(0);
    const chain = q.queue.walk(q.queue.take(), q.memory);
    expect(chain.writable.map((v) => v.length)).toEqual([512, 512]);
  });

  test("an indirect table is followed", () => {
    const q = makeQueue();
    const table = 0x40000;
    q.descriptor(table, 0, 0x10000, 16, NEXT, 1);
    q.descriptor(table, 1, 0x11000, 512, NEXT | WRITE, 2);
    q.descriptor(table, 2, 0x12000, 1, WRITE);
    q.descriptor(q.descriptorsAt, 2, table, 48, INDIRECT);
    q.offer(2);
    const chain = q.queue.walk(q.queue.take(), q.memory);
    expect(chain.readable.map((v) => v.length)).toEqual([16]);
    expect(chain.writable.map((v) => v.length)).toEqual([512, 1]);
    expect(chain.descriptors).toBe(4);
  });

  const broken: [string, (q: ReturnType<typeof makeQueue>) => void, RegExp][] = [
    ["next index outside the table", (q) => q.descriptor(q.descriptorsAt, 0, 0x10000, 16, NEXT, 8), /names descriptor 8/],
    ["a loop", (q) => (q.descriptor(q.descriptorsAt, 0, 0x10000, 16, NEXT, 1), q.descriptor(q.descriptorsAt, 1, 0x10000, 16, NEXT, 0)), /loop/],
    ["a buffer outside guest memory", (q) => q.descriptor(q.descriptorsAt, 0, 1 << 20, 16, 0), /outside guest memory/],
    ["a buffer running past the end of memory", (q) => q.descriptor(q.descriptorsAt, 0, (1 << 20) - 8, 16, 0), /outside guest memory/],
    ["an address beyond 2^53", (q) => q.descriptor(q.descriptorsAt, 0, 2 ** 60, 16, 0), /beyond guest memory/],
    ["readable after writable", (q) => (q.descriptor(q.descriptorsAt, 0, 0x10000, 1, WRITE | NEXT, 1), q.descriptor(q.descriptorsAt, 1, 0x10000, 16, 0)), /readable descriptor after/],
    ["indirect table of a partial descriptor", (q) => q.descriptor(q.descriptorsAt, 0, 0x40000, 20, INDIRECT), /whole number/],
    ["empty indirect table", (q) => q.descriptor(q.descriptorsAt, 0, 0x40000, 0, INDIRECT), /whole number/],
    ["indirect table over the limit", (q) => q.descriptor(q.descriptorsAt, 0, 0x40000, 17 * 16, INDIRECT), /at most 16/],
    ["indirect table outside memory", (q) => q.descriptor(q.descriptorsAt, 0, (1 << 20) - 16, 32, INDIRECT), /outside guest memory/],
    ["indirect together with next", (q) => q.descriptor(q.descriptorsAt, 0, 0x40000, 32, INDIRECT | NEXT, 1), /must not also chain/],
    [
      "nested indirect",
      (q) => (q.descriptor(0x40000, 0, 0x50000, 16, INDIRECT), q.descriptor(q.descriptorsAt, 0, 0x40000, 16, INDIRECT)),
      /nests/,
    ],
    ["indirect after other descriptors", (q) => (q.descriptor(q.descriptorsAt, 0, 0x10000, 16, NEXT, 1), q.descriptor(q.descriptorsAt, 1, 0x40000, 16, INDIRECT)), /after other/],
    [
      "a loop inside an indirect table",
      (q) => (q.descriptor(0x40000, 0, 0x10000, 16, NEXT, 1), q.descriptor(0x40000, 1, 0x10000, 16, NEXT, 0), q.descriptor(q.descriptorsAt, 0, 0x40000, 32, INDIRECT)),
      /loop/,
    ],
  ];
  for (const [name, build, message] of broken) {
    test(`malformed chain: ${name}`, () => {
      const q = makeQueue();
      build(q);
      q.offer(0);
      const head = q.queue.take();
      expect(() => q.queue.walk(head, q.memory)).toThrow(message);
      expect(() => q.queue.walk(head, q.memory)).toThrow(QueueError);
    });
  }

  test("indirect tables are refused when not negotiated", () => {
    const q = makeQueue({ indirect: false });
    q.descriptor(q.descriptorsAt, 0, 0x40000, 16, INDIRECT);
    q.offer(0);
    expect(() => q.queue.walk(q.queue.take(), q.memory)).toThrow(/not negotiated/);
  });

  test("an available head outside the table and an index that runs ahead are errors", () => {
    const q = makeQueue();
    q.offer(9);
    expect(() => q.queue.take()).toThrow(QueueError);
    const r = makeQueue();
    r.view.setUint16(r.availableAt + 2, 9, true);
    expect(() => r.queue.pending()).toThrow(/ahead/);
  });

  test("used ring: element layout and index, with wrap-around of the 16-bit counters", () => {
    const q = makeQueue({ size: 4 });
    for (let i = 0; i < 70000; i++) q.queue.putUsed(i % 4, i);
    const used = q.view.getUint16(q.usedAt + 2, true);
    expect(used).toBe(70000 & 0xffff);
    const last = (70000 - 1) % 4;
    expect(q.view.getUint32(q.usedAt + 4 + 8 * last, true)).toBe((70000 - 1) % 4);
    expect(q.view.getUint32(q.usedAt + 8 + 8 * last, true)).toBe(70000 - 1);
  });

  test("without event index, NO_INTERRUPT in the available flags suppresses notifications", () => {
    const q = makeQueue();
    q.queue.putUsed(0, 1);
    expect(q.queue.takeNotification()).toBe(true);
    expect(q.queue.takeNotification()).toBe(false); // nothing new
    q.view.setUint16(q.availableAt, 1, true);
    q.queue.putUsed(1, 1);
    expect(q.queue.takeNotification()).toBe(false);
  });

  test("with event index, the driver's used_event decides", () => {
    const q = makeQueue({ eventIndex: true });
    const usedEventAt = q.availableAt + 4 + 2 * q.size;
    q.queue.putUsed(0, 1); // used 1
    expect(q.queue.takeNotification()).toBe(true); // first one always
    q.view.setUint16(usedEventAt, 5, true); // interrupt me once used passes 5
    q.queue.putUsed(1, 1); // used 2
    q.queue.putUsed(2, 1); // used 3
    expect(q.queue.takeNotification()).toBe(false);
    q.queue.putUsed(3, 1); // 4
    q.queue.putUsed(4, 1); // 5
    q.queue.putUsed(5, 1); // 6: crossed 5
    expect(q.queue.takeNotification()).toBe(true);
  });

  test("with event index, armKick publishes avail_event and reports entries that raced in", () => {
    const q = makeQueue({ eventIndex: true });
    const availableEventAt = q.usedAt + 4 + 8 * q.size;
    q.descriptor(q.descriptorsAt, 0, 0x10000, 16, 0);
    q.offer(0, 0);
    q.queue.take();
    expect(q.queue.armKick()).toBe(true);
    expect(q.view.getUint16(availableEventAt, true)).toBe(1);
    q.queue.take();
    expect(q.queue.armKick()).toBe(false);
    expect(q.view.getUint16(availableEventAt, true)).toBe(2);
  });

  test("vring_need_event across the 16-bit wrap", () => {
    expect(needsEvent(0xffff, 0, 0xfffe)).toBe(true);
    expect(needsEvent(0xffff, 0xfffe, 0xfffd)).toBe(false);
    expect(needsEvent(3, 10, 2)).toBe(true);
    expect(needsEvent(3, 3, 2)).toBe(false);
  });

  test("sizes that are not powers of two, and short or misaligned areas, are refused", () => {
    const ram = new Uint8Array(65536);
    const areas = { descriptors: ram.subarray(0, 16 * 6), available: ram.subarray(4096, 4200), used: ram.subarray(8192, 8300) };
    expect(() => new SplitQueue({ size: 6, eventIndex: false, indirect: false, indirectDescriptorsMax: 8 }, areas, 0)).toThrow(QueueError);
    expect(() => new SplitQueue({ size: 8, eventIndex: false, indirect: false, indirectDescriptorsMax: 8 }, areas, 0)).toThrow(/smaller/);
    const misaligned = { descriptors: ram.subarray(2, 2 + 128), available: ram.subarray(4096, 4200), used: ram.subarray(8192, 8300) };
    expect(() => new SplitQueue({ size: 8, eventIndex: false, indirect: false, indirectDescriptorsMax: 8 }, misaligned, 0)).toThrow(/misaligned/);
  });
});
