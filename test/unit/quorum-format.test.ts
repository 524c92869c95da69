// Proves the witness codec (src/quorum/format.ts): every record kind round-trips; the bytes on disk
// are pinned (header and body fields by hand, each record by its CRC32C) so a format change cannot
// slip in unnoticed; a torn sector, a foreign cluster's record, a record in the wrong place and a
// field value this version never writes are all classified as untrusted, while the zero padding
// after a record is not part of it; the newer of two valid copies wins, and a torn newer copy falls
// back to the older one.
import { describe, expect, test } from "bun:test";
import { crc32c } from "../../src/common/crc32c.ts";
import { witnessAreaBytes, witnessRecordBytes } from "../../src/constants.ts";
import {
  decodeWitness,
  encodeDecided,
  encodeFormattedArea,
  encodeMailbox,
  encodePaxosBlock,
  encodeSlot,
  encodeSuperblock,
  latestDecided,
  LeaseMode,
  MailboxRequest,
  nextCopy,
  nodeIndexOf,
  parseClusterId,
  type Slot,
  SlotRole,
  type Superblock,
  superblockCluster,
  witnessLayout,
} from "../../src/quorum/format.ts";

const cluster = parseClusterId("00112233445566778899aabbccddeeff");
const otherCluster = parseClusterId("ffeeddccbbaa99887766554433221100");
const superblock: Superblock = {
  recordBytes: witnessRecordBytes,
  areaBytes: witnessAreaBytes,
  formattedAtMs: 1_700_000_000_000,
  timing: { heartbeatIntervalMs: 500, linkTimeoutMs: 1500, headStartMs: 1000, selfFenceTimeoutMs: 3000, deadTimeoutMs: 5000, watchdogTimeoutMs: 3000, ioTimeoutMs: 500, clockRateBoundPpm: 10_000 },
};
const slot: Slot = { heartbeat: 42n, epoch: 7n, role: SlotRole.Owner, fencedEpoch: 6n, nodeName: "a", primaryCount: 2, volumeIds: [3, 9], truncated: false };

function area(): Uint8Array {
  return encodeFormattedArea(cluster, superblock);
}

function put(target: Uint8Array, sector: number, bytes: Uint8Array): void {
  target.set(bytes, sector * witnessRecordBytes);
}

function hex(bytes: Uint8Array): string {
  return Buffer.from(bytes).toString("hex");
}

describe("golden bytes", () => {
  test("a slot sector: header and body fields at their offsets, CRC32C of the record in the header", () => {
    const sector = encodeSlot(cluster, 1, slot, 5n);
    expect(sector.length).toBe(4096);
    // magic "TANDEMWT", version 1 (LE u16), kind 2 (slot), node 1, length 124 (116 + two ids), zero, cluster id, sequence 5 (LE u64)
    expect(hex(sector.subarray(0, 40))).toBe("54414e44454d5754" + "0100" + "02" + "01" + "7c00" + "0000" + "00112233445566778899aabbccddeeff" + "0500000000000000");
    expect(hex(sector.subarray(44, 48))).toBe("00000000");
    // heartbeat 42, epoch 7, role 3, flags 0, zero, primary count 2, fenced epoch 6, name "a"
    expect(hex(sector.subarray(48, 84))).toBe("2a00000000000000" + "0700000000000000" + "03" + "00" + "0000" + "02000000" + "0600000000000000" + "61000000");
    // two volume ids listed: 3 and 9; nothing after the record
    expect(hex(sector.subarray(112, 124))).toBe("0200" + "0000" + "03000000" + "09000000");
    expect(sector.subarray(124).every((byte) => byte === 0)).toBe(true);
    // The checksum: CRC32C of the record's 124 bytes with the checksum field taken as zero.
    const view = new DataView(sector.buffer);
    const copy = sector.slice(0, 124);
    copy.fill(0, 40, 44);
    expect(view.getUint32(40, true)).toBe(crc32c(copy));
    expect(view.getUint32(40, true)).toBe(0x77fed670);
  });

  test("every other record kind is pinned by its checksum", () => {
    const crc = (sector: Uint8Array) => new DataView(sector.buffer).getUint32(40, true).toString(16);
    expect(crc(encodeSuperblock(cluster, superblock, 1n))).toBe("f563a1d7");
    expect(crc(encodeMailbox(cluster, 0, { request: MailboxRequest.Fence, epoch: 8n, senderHeartbeat: 99n, fromName: "b" }, 1n))).toBe("80f6b88c");
    expect(crc(encodePaxosBlock(cluster, 0, { instance: 4n, mbal: 7n, bal: 7n, value: { epoch: 4n, mode: LeaseMode.Solo, owner: 1, holders: [1], forced: false } }, 3n))).toBe("b021e2ba");
    expect(crc(encodeDecided(cluster, 1, { version: 4n, value: { epoch: 4n, mode: LeaseMode.Shared, owner: 0, holders: [0, 1], forced: false } }, 2n))).toBe("26c30d27");
  });
});

describe("round trips", () => {
  test("every record kind decodes to what was encoded", () => {
    const bytes = area();
    const block = { instance: 4n, mbal: 9n, bal: 7n, value: { epoch: 4n, mode: LeaseMode.Solo, owner: 1 as const, holders: [1 as const], forced: true } };
    const decided = { version: 3n, value: { epoch: 3n, mode: LeaseMode.Shared, owner: 0 as const, holders: [0 as const, 1 as const], forced: false } };
    const mailbox = { request: MailboxRequest.Fence, epoch: 4n, senderHeartbeat: 17n, fromName: "b" };
    put(bytes, witnessLayout.slot(0), encodeSlot(cluster, 0, slot, 1n));
    put(bytes, witnessLayout.paxos(1) + 1, encodePaxosBlock(cluster, 1, block, 6n));
    put(bytes, witnessLayout.decided(0), encodeDecided(cluster, 0, decided, 1n));
    put(bytes, witnessLayout.mailbox(0), encodeMailbox(cluster, 0, mailbox, 1n));
    const state = decodeWitness(bytes, cluster);
    expect(state.superblock.newest?.record).toEqual(superblock);
    expect(state.slots[0].newest).toEqual({ copy: 0, sequence: 1n, record: slot });
    expect(state.slots[1].newest).toBeUndefined();
    expect(state.slots[1].copies).toEqual([{ state: "empty" }, { state: "empty" }]);
    expect(state.paxos[1].newest).toEqual({ copy: 1, sequence: 6n, record: block });
    expect(state.decided[0].newest?.record).toEqual(decided);
    expect(state.mailboxes[0].newest?.record).toEqual(mailbox);
    expect(latestDecided(state)).toEqual(decided);
  });

  test("a slot lists at most 960 volume ids and says the list is truncated", () => {
    const many = { ...slot, volumeIds: Array.from({ length: 1000 }, (_, index) => index + 1), primaryCount: 1000 };
    const bytes = area();
    put(bytes, witnessLayout.slot(1), encodeSlot(cluster, 1, many, 1n));
    const decoded = decodeWitness(bytes, cluster).slots[1].newest!.record;
    expect(decoded.volumeIds.length).toBe(960);
    expect(decoded.truncated).toBe(true);
    expect(decoded.primaryCount).toBe(1000);
  });

  test("node indexes follow the sorted names", () => {
    expect(nodeIndexOf("a", "b")).toBe(0);
    expect(nodeIndexOf("b", "a")).toBe(1);
    expect(nodeIndexOf("node-10", "node-9")).toBe(0);
  });
});

describe("untrusted sectors", () => {
  test("a torn sector is detected and the older valid copy is used", () => {
    const bytes = area();
    put(bytes, witnessLayout.slot(0), encodeSlot(cluster, 0, { ...slot, heartbeat: 10n }, 3n));
    // A slot listing 200 volumes is 916 bytes: two 512-byte pieces. The write of sequence 4 over
    // sequence 2 tore: its first piece landed, the second kept the old bytes.
    const ids = (from: number) => Array.from({ length: 200 }, (_, index) => from + index);
    const newer = encodeSlot(cluster, 0, { ...slot, heartbeat: 11n, volumeIds: ids(1000) }, 4n);
    const torn = encodeSlot(cluster, 0, { ...slot, heartbeat: 1n, volumeIds: ids(5000) }, 2n);
    torn.set(newer.subarray(0, 512), 0);
    put(bytes, witnessLayout.slot(0) + 1, torn);
    const pair = decodeWitness(bytes, cluster).slots[0];
    expect(pair.copies[1].state).toBe("torn");
    expect(pair.newest).toEqual({ copy: 0, sequence: 3n, record: { ...slot, heartbeat: 10n } });
    expect(nextCopy(pair)).toEqual({ copy: 1, sequence: 4n });
  });

  test("a tear that only reaches the zero padding leaves the whole new record", () => {
    const bytes = area();
    const newer = encodeSlot(cluster, 0, { ...slot, heartbeat: 11n }, 4n); // 124 bytes: within the first piece
    const torn = encodeSlot(cluster, 0, { ...slot, heartbeat: 1n, volumeIds: Array.from({ length: 300 }, (_, index) => index) }, 2n);
    torn.set(newer.subarray(0, 512), 0);
    put(bytes, witnessLayout.slot(0), torn);
    expect(decodeWitness(bytes, cluster).slots[0].newest).toEqual({ copy: 0, sequence: 4n, record: { ...slot, heartbeat: 11n } });
  });

  test("a single flipped bit anywhere in the record makes the sector torn; the zero padding after it is not part of it", () => {
    // A decided record is 72 bytes: magic (0-7), header (8-47), body (48-71).
    const expected: Record<number, "foreign" | "torn" | "valid"> = { 0: "foreign", 12: "torn", 20: "torn", 41: "torn", 50: "torn", 71: "torn", 72: "valid", 2000: "valid", 4095: "valid" };
    for (const [offset, state] of Object.entries(expected)) {
      const bytes = area();
      const sector = encodeDecided(cluster, 0, { version: 1n, value: { epoch: 1n, mode: LeaseMode.Solo, owner: 0, holders: [0], forced: false } }, 1n);
      sector[Number(offset)]! ^= 0x10;
      put(bytes, witnessLayout.decided(0), sector);
      const copy = decodeWitness(bytes, cluster).decided[0].copies[0];
      expect({ offset, state: copy.state }).toEqual({ offset, state });
    }
  });

  test("a torn write of a longer record over a shorter one is caught", () => {
    // A slot listing 900 volumes spans 31 of the sector's 512-byte pieces; a tear keeps one old piece.
    const bytes = area();
    const old = encodeSlot(cluster, 0, { ...slot, volumeIds: [1] }, 1n);
    const long = encodeSlot(cluster, 0, { ...slot, volumeIds: Array.from({ length: 900 }, (_, index) => index) }, 2n);
    const torn = long.slice();
    torn.set(old.subarray(1024, 1536), 1024);
    put(bytes, witnessLayout.slot(0), torn);
    expect(decodeWitness(bytes, cluster).slots[0].copies[0].state).toBe("torn");
  });

  test("another cluster's records are foreign, never trusted", () => {
    const bytes = encodeFormattedArea(otherCluster, superblock);
    put(bytes, witnessLayout.decided(1), encodeDecided(otherCluster, 1, { version: 9n, value: { epoch: 9n, mode: LeaseMode.Solo, owner: 1, holders: [1], forced: false } }, 1n));
    const state = decodeWitness(bytes, cluster);
    expect(state.superblock.newest).toBeUndefined();
    expect(state.superblock.copies[0]).toEqual({ state: "foreign", why: "cluster ffeeddccbbaa99887766554433221100" });
    expect(state.decided[1].copies[0].state).toBe("foreign");
    expect(latestDecided(state).version).toBe(0n);
    expect(superblockCluster(bytes)).toEqual(otherCluster);
  });

  test("a record written for another node or kind is foreign where it lies", () => {
    const bytes = area();
    put(bytes, witnessLayout.slot(1), encodeSlot(cluster, 0, slot, 1n)); // node 0's slot in node 1's place
    put(bytes, witnessLayout.paxos(0), encodeDecided(cluster, 0, { version: 1n, value: { epoch: 1n, mode: LeaseMode.Shared, owner: 0, holders: [0, 1], forced: false } }, 1n));
    const state = decodeWitness(bytes, cluster);
    expect(state.slots[1].copies[0]).toEqual({ state: "foreign", why: "a slot record of node 0 where a slot of node 1 belongs" });
    expect(state.paxos[0].copies[0].state).toBe("foreign");
  });

  test("data that is not ours (a filesystem, random bytes) is foreign", () => {
    const bytes = area();
    const random = new Uint8Array(witnessRecordBytes);
    crypto.getRandomValues(random);
    put(bytes, witnessLayout.slot(0), random);
    expect(decodeWitness(bytes, cluster).slots[0].copies[0]).toEqual({ state: "foreign", why: "not a Tandem witness record" });
  });

  test("a value this version never writes, under a good checksum, is foreign", () => {
    const bytes = area();
    const sector = encodeSlot(cluster, 0, slot, 1n);
    sector[64] = 9; // role 9 does not exist
    const copy = sector.slice(0, 124);
    copy.fill(0, 40, 44);
    new DataView(sector.buffer).setUint32(40, crc32c(copy), true);
    put(bytes, witnessLayout.slot(0), sector);
    expect(decodeWitness(bytes, cluster).slots[0].copies[0]).toEqual({ state: "foreign", why: "a field holds a value this version never writes" });
  });

  test("of two valid copies the higher sequence wins, whichever sector it is in", () => {
    const bytes = area();
    put(bytes, witnessLayout.decided(0), encodeDecided(cluster, 0, { version: 5n, value: { epoch: 5n, mode: LeaseMode.Solo, owner: 0, holders: [0], forced: false } }, 8n));
    put(bytes, witnessLayout.decided(0) + 1, encodeDecided(cluster, 0, { version: 4n, value: { epoch: 4n, mode: LeaseMode.Shared, owner: 0, holders: [0, 1], forced: false } }, 7n));
    const pair = decodeWitness(bytes, cluster).decided[0];
    expect(pair.newest?.copy).toBe(0);
    expect(pair.newest?.record.version).toBe(5n);
    expect(nextCopy(pair)).toEqual({ copy: 1, sequence: 9n });
  });
});
