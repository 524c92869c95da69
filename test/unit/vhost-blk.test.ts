// Proves the virtio-blk request decoder and config encoder (src/node/export/vhost/blk.ts), pure,
// over hand-made chains: each request type decodes to the right offset, length and data views
// (views of the chain's own buffers, so writes through them land in "guest memory"), the header
// and status byte are found by byte position however the driver split them across descriptors,
// wrong requests decode to IOERR/UNSUPP rejections, chains with no room for a header or status are
// BlkChainErrors, and the config space has virtio 1.1 §5.2.4's layout.
import { describe, expect, test } from "bun:test";
import {
  BlkChainError,
  BlkRequestType,
  BlkStatus,
  blkDeviceId,
  decodeBlkRequest,
  encodeBlkConfig,
  type BlkLimits,
} from "../../src/node/export/vhost/blk.ts";
import type { Chain } from "../../src/node/export/vhost/virtqueue.ts";

const limits: BlkLimits = { requestBytesMax: 1 << 20, segmentsMax: 4, rangesMax: 2, rangeBytesMax: 1 << 30, discard: true, writeZeroes: true, flush: true };

function header(type: number, sector: number | bigint): Uint8Array {
  const bytes = new Uint8Array(16);
  const view = new DataView(bytes.buffer);
  view.setUint32(0, type, true);
  view.setBigUint64(8, BigInt(sector), true);
  return bytes;
}

function chain(readable: Uint8Array[], writable: Uint8Array[]): Chain {
  return {
    head: 0,
    readable,
    writable,
    readableBytes: readable.reduce((n, v) => n + v.length, 0),
    writableBytes: writable.reduce((n, v) => n + v.length, 0),
    descriptors: readable.length + writable.length,
  };
}

function ranges(list: [number, number, number][]): Uint8Array {
  const bytes = new Uint8Array(16 * list.length);
  const view = new DataView(bytes.buffer);
  list.forEach(([sector, sectors, flags], i) => {
    view.setBigUint64(16 * i, BigInt(sector), true);
    view.setUint32(16 * i + 8, sectors, true);
    view.setUint32(16 * i + 12, flags, true);
  });
  return bytes;
}

describe("decode", () => {
  test("IN: data is every writable byte but the last; status is the last", () => {
    const data = new Uint8Array(4096);
    const status = new Uint8Array(1);
    const request = decodeBlkRequest(chain([header(BlkRequestType.In, 8)], [data, status]), limits);
    if (request.kind !== "read") throw new Error(request.kind);
    expect(request.offsetBytes).toBe(8 * 512);
    expect(request.lengthBytes).toBe(4096);
    expect(request.segments[0]).toBe(data);
    request.status[0] = 5;
    expect(status[0]).toBe(5);
  });

  test("IN with data and status sharing one descriptor", () => {
    const shared = new Uint8Array(1025);
    const request = decodeBlkRequest(chain([header(BlkRequestType.In, 0)], [shared]), limits);
    if (request.kind !== "read") throw new Error(request.kind);
    expect(request.lengthBytes).toBe(1024);
    request.segments[0]![1023] = 9;
    request.status[0] = 1;
    expect([shared[1023], shared[1024]]).toEqual([9, 1]);
  });

  test("OUT: the header split over two descriptors and data following in the second", () => {
    const h = header(BlkRequestType.Out, 3);
    const first = h.subarray(0, 10);
    const second = new Uint8Array(6 + 512);
    second.set(h.subarray(10), 0);
    second.fill(0xee, 6);
    const request = decodeBlkRequest(chain([first, second], [new Uint8Array(1)]), limits);
    if (request.kind !== "write") throw new Error(request.kind);
    expect(request.offsetBytes).toBe(3 * 512);
    expect(request.lengthBytes).toBe(512);
    expect(request.segments.length).toBe(1);
    expect(request.segments[0]!.every((b) => b === 0xee)).toBe(true);
    second[6] = 1; // views, not copies
    expect(request.segments[0]![0]).toBe(1);
  });

  test("FLUSH, GET_ID (truncated to the buffer), DISCARD and WRITE_ZEROES", () => {
    const status = new Uint8Array(1);
    expect(decodeBlkRequest(chain([header(BlkRequestType.Flush, 0)], [status]), limits).kind).toBe("flush");
    const id = decodeBlkRequest(chain([header(BlkRequestType.GetId, 0)], [new Uint8Array(8), status]), limits);
    if (id.kind !== "getId") throw new Error(id.kind);
    expect(id.target.map((v) => v.length)).toEqual([8]);
    const discard = decodeBlkRequest(chain([header(BlkRequestType.Discard, 0), ranges([[8, 16, 0], [100, 1, 0]])], [status]), limits);
    expect(discard).toMatchObject({ kind: "discard", ranges: [{ offsetBytes: 4096, lengthBytes: 8192, unmap: false }, { offsetBytes: 51200, lengthBytes: 512, unmap: false }] });
    const zeroes = decodeBlkRequest(chain([header(BlkRequestType.WriteZeroes, 0), ranges([[0, 8, 1]])], [status]), limits);
    expect(zeroes).toMatchObject({ kind: "writeZeroes", ranges: [{ offsetBytes: 0, lengthBytes: 4096, unmap: true }] });
  });

  const rejects: [string, () => Chain, BlkStatus, Partial<BlkLimits>?][] = [
    ["unknown type", () => chain([header(99, 0)], [new Uint8Array(1)]), BlkStatus.Unsupported],
    ["GET_LIFETIME (not offered)", () => chain([header(BlkRequestType.GetLifetime, 0)], [new Uint8Array(17)]), BlkStatus.Unsupported],
    ["read of a partial sector", () => chain([header(BlkRequestType.In, 0)], [new Uint8Array(100), new Uint8Array(1)]), BlkStatus.IoError],
    ["read over the request limit", () => chain([header(BlkRequestType.In, 0)], [new Uint8Array(2 << 20), new Uint8Array(1)]), BlkStatus.IoError],
    ["read in more segments than seg_max", () => chain([header(BlkRequestType.In, 0)], [...Array.from({ length: 5 }, () => new Uint8Array(512)), new Uint8Array(1)]), BlkStatus.IoError],
    ["sector beyond any volume", () => chain([header(BlkRequestType.In, 2n ** 60n)], [new Uint8Array(512), new Uint8Array(1)]), BlkStatus.IoError],
    ["discard with the unmap flag", () => chain([header(BlkRequestType.Discard, 0), ranges([[0, 8, 1]])], [new Uint8Array(1)]), BlkStatus.Unsupported],
    ["write-zeroes with an unknown flag", () => chain([header(BlkRequestType.WriteZeroes, 0), ranges([[0, 8, 2]])], [new Uint8Array(1)]), BlkStatus.Unsupported],
    ["too many ranges", () => chain([header(BlkRequestType.Discard, 0), ranges([[0, 1, 0], [1, 1, 0], [2, 1, 0]])], [new Uint8Array(1)]), BlkStatus.IoError],
    ["a partial range", () => chain([header(BlkRequestType.Discard, 0), new Uint8Array(10)], [new Uint8Array(1)]), BlkStatus.IoError],
    ["no ranges", () => chain([header(BlkRequestType.Discard, 0)], [new Uint8Array(1)]), BlkStatus.IoError],
    ["discard not negotiated", () => chain([header(BlkRequestType.Discard, 0), ranges([[0, 1, 0]])], [new Uint8Array(1)]), BlkStatus.Unsupported, { discard: false }],
    ["flush not negotiated", () => chain([header(BlkRequestType.Flush, 0)], [new Uint8Array(1)]), BlkStatus.Unsupported, { flush: false }],
  ];
  for (const [name, build, code, override] of rejects) {
    test(`rejected: ${name}`, () => {
      const request = decodeBlkRequest(build(), { ...limits, ...override });
      expect(request.kind).toBe("reject");
      if (request.kind === "reject") expect(request.code as BlkStatus).toBe(code);
    });
  }

  test("no room for a header or a status byte is a chain error", () => {
    expect(() => decodeBlkRequest(chain([new Uint8Array(15)], [new Uint8Array(1)]), limits)).toThrow(BlkChainError);
    expect(() => decodeBlkRequest(chain([header(BlkRequestType.Out, 0), new Uint8Array(512)], []), limits)).toThrow(BlkChainError);
  });
});

describe("config space", () => {
  test("virtio_blk_config field offsets", () => {
    const bytes = encodeBlkConfig({
      capacitySectors: 0x1_0000_0002,
      segmentsMax: 254,
      blockSizeBytes: 512,
      physicalBlockExponent: 3,
      minimumIoSectors: 8,
      optimalIoSectors: 0,
      queues: 4,
      discardSectorsMax: 0x200000,
      discardSegmentsMax: 32,
      discardAlignmentSectors: 8,
      writeZeroesSectorsMax: 0x200000,
      writeZeroesSegmentsMax: 32,
      writeZeroesMayUnmap: true,
    });
    const view = new DataView(bytes.buffer);
    expect(bytes.length).toBe(60);
    expect(view.getBigUint64(0, true)).toBe(0x1_0000_0002n);
    expect(view.getUint32(12, true)).toBe(254);
    expect(view.getUint32(20, true)).toBe(512);
    expect(view.getUint8(24)).toBe(3);
    expect(view.getUint16(26, true)).toBe(8);
    expect(view.getUint16(34, true)).toBe(4);
    expect(view.getUint32(36, true)).toBe(0x200000);
    expect(view.getUint32(40, true)).toBe(32);
    expect(view.getUint32(44, true)).toBe(8);
    expect(view.getUint32(48, true)).toBe(0x200000);
    expect(view.getUint32(52, true)).toBe(32);
    expect(view.getUint8(56)).toBe(1);
  });

  test("device id: the volume name, NUL padded to 20 bytes, cut at 20", () => {
    expect(Buffer.from(blkDeviceId("vm-disk")).toString("latin1")).toBe("vm-disk" + "\0".repeat(13));
    expect(Buffer.from(blkDeviceId("a".repeat(30))).toString()).toBe("a".repeat(20));
  });
});
