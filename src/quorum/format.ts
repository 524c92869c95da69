// The witness disk's on-disk format (DESIGN.md §5): a pure codec over bytes, no IO. The witness is a
// small shared LUN, partition or file that both nodes read and write with O_DIRECT; every record is
// one aligned sector (witnessRecordBytes) ending in its own CRC32C, so a torn write or someone
// else's data is detected and never trusted.
//
// Layout (sector numbers; every logical record has TWO copies in consecutive sectors):
//   0,1    superblock        written by `tandem witness format` only
//   2,3    slot of node 0    written only by node 0: heartbeat, epoch, role, volumes, fenced(epoch)
//   4,5    slot of node 1    written only by node 1
//   6,7    mailbox of node 0 written only by node 1 (a fence request)
//   8,9    mailbox of node 1 written only by node 0
//   10,11  Disk Paxos block of node 0, 12,13 of node 1 (written only by their owner)
//   14,15  decided record as node 0 learned it, 16,17 as node 1 learned it
// Node indexes: the two node names sorted, the smaller is node 0 (both nodes know both names).
//
// Why two copies: a writer alternates between them (each carries a sequence number) and never
// overwrites its newest good copy, so a write torn by a crash leaves the previous value readable.
// A reader takes the valid copy with the higher sequence. A torn write therefore behaves exactly
// like a write that never happened, which is what the lease protocol's proofs assume, and a node
// that died in the middle of a write never leaves the other one unable to decide.
//
// Every sector: a 48-byte header, the record's body, and zeros to the end of the sector. Header:
//   0 magic "TANDEMWT" · 8 format version u16 · 10 kind u8 · 11 node u8 · 12 length u16 (bytes the
//   checksum covers, header included) · 14 zero · 16 cluster id (16 bytes) · 32 sequence u64 ·
//   40 CRC32C of bytes [0, length) with this field taken as zero · 44 zero.
// Integers are little-endian. The checksum covers the record, not the zero padding: a tear that
// touches the record's bytes is detected, and the padding carries nothing to protect (checking 4 KiB
// of zeros on every read would cost a loaded node for nothing). An all-zero sector is "empty" (never
// written). A sector with a good checksum but another cluster id, magic, version, kind or node is
// "foreign"; a bad checksum under our magic is "torn"; anything else that fails is "foreign" too.
import { assert } from "../common/assert.ts";
import { crc32c } from "../common/crc32c.ts";
import { witnessAreaBytes, witnessNodeNameBytesMax, witnessRecordBytes, witnessSlotVolumeIdsMax } from "../constants.ts";

/** "TANDEMWT": the first eight bytes of every witness sector. */
export const witnessMagic = Uint8Array.from([0x54, 0x41, 0x4e, 0x44, 0x45, 0x4d, 0x57, 0x54]);
export const witnessFormatVersion = 1;
export const clusterIdBytes = 16;
const checksumOffset = 40;
/** The header's size: every body starts here. */
export const witnessHeaderBytes = 48;

export const enum RecordKind {
  Superblock = 1,
  Slot = 2,
  Mailbox = 3,
  Paxos = 4,
  Decided = 5,
}

export type NodeIndex = 0 | 1;
export const nodeIndexes: readonly NodeIndex[] = [0, 1];

export function otherNode(node: NodeIndex): NodeIndex {
  return node === 0 ? 1 : 0;
}

/** The index of `name` in a pair: the names sorted, the smaller is node 0. */
export function nodeIndexOf(name: string, peerName: string): NodeIndex {
  assert(name !== peerName, "the two nodes of a pair have different names");
  return name < peerName ? 0 : 1;
}

/** First sector of each logical record (the second copy is the next sector). */
export const witnessLayout = {
  superblock: 0,
  slot: (node: NodeIndex) => 2 + node * 2,
  mailbox: (node: NodeIndex) => 6 + node * 2,
  paxos: (node: NodeIndex) => 10 + node * 2,
  decided: (node: NodeIndex) => 14 + node * 2,
  /** Sectors holding records; one read of this many sectors from 0 sees the whole state. */
  sectors: 18,
} as const;

// ---- Record contents ----

/** Timing parameters the witness was formatted with (DESIGN.md §5), in milliseconds. */
export interface WitnessTiming {
  heartbeatIntervalMs: number;
  linkTimeoutMs: number;
  headStartMs: number;
  selfFenceTimeoutMs: number;
  deadTimeoutMs: number;
  watchdogTimeoutMs: number;
  ioTimeoutMs: number;
  /** ρ in parts per million. */
  clockRateBoundPpm: number;
}

export interface Superblock {
  recordBytes: number;
  areaBytes: number;
  /** Wall-clock time of the format (informational: nothing is timed by it). */
  formattedAtMs: number;
  timing: WitnessTiming;
}

/** What a node says it is doing, in its slot. */
export const enum SlotRole {
  Starting = 0,
  /** Connected to its peer: serving per the volumes' roles. */
  Connected = 1,
  /** Lost its peer: IO frozen while the lease is decided. */
  Frozen = 2,
  /** Owns the current epoch alone (SOLO(me)). */
  Owner = 3,
  /** Lost the lease: outdated, frozen until it has resynced. */
  Outdated = 4,
  /** Its own heartbeat writes stalled while the link was down: all IO stopped. */
  SelfFenced = 5,
}
const slotRoleMax = SlotRole.SelfFenced;

export const slotRoleNames = ["starting", "connected", "frozen", "owner", "outdated", "self-fenced"] as const;

export interface Slot {
  /** Increases with every heartbeat write; the peer judges liveness by watching it change. */
  heartbeat: bigint;
  /** The latest epoch the node knows. */
  epoch: bigint;
  role: SlotRole;
  /** "I have fenced myself for epoch N" (0: never). */
  fencedEpoch: bigint;
  nodeName: string;
  primaryCount: number;
  /** The ids of the volumes it serves as primary (at most witnessSlotVolumeIdsMax; see `truncated`). */
  volumeIds: number[];
  truncated: boolean;
}

export const enum MailboxRequest {
  None = 0,
  /** "Fence yourself for epoch N": the sender won N. */
  Fence = 1,
}

export interface Mailbox {
  request: MailboxRequest;
  epoch: bigint;
  /** The sender's heartbeat counter when it wrote the request (informational). */
  senderHeartbeat: bigint;
  fromName: string;
}

export const enum LeaseMode {
  /** Both nodes connected and replicating; both hold the latest data. */
  Shared = 1,
  /** One node writes alone. */
  Solo = 2,
}

/** The value a Disk Paxos instance decides: who may write, and who holds the latest data. */
export interface LeaseValue {
  epoch: bigint;
  mode: LeaseMode;
  /** The SOLO owner (meaningless for SHARED, stored as 0). */
  owner: NodeIndex;
  /** Data holders: nodes whose replicas hold every acknowledged write. */
  holders: NodeIndex[];
  /** Chosen by an operator's forced promotion, not automatically. */
  forced: boolean;
}

/** One node's Disk Paxos block (Gafni & Lamport's dblock), for instance `instance`. */
export interface PaxosBlock {
  instance: bigint;
  /** The highest ballot the node has started. */
  mbal: bigint;
  /** The ballot in which it accepted `value` (0: none). */
  bal: bigint;
  value: LeaseValue | undefined;
}

/** The decided record: `version` is the Disk Paxos instance that chose `value`. */
export interface DecidedRecord {
  version: bigint;
  value: LeaseValue;
}

/** Before any decision: version 0, nobody known to hold the latest data (the first SHARED record fixes that). */
export const initialDecided: DecidedRecord = {
  version: 0n,
  value: { epoch: 0n, mode: LeaseMode.Shared, owner: 0, holders: [], forced: false },
};

export const emptyPaxosBlock: PaxosBlock = { instance: 0n, mbal: 0n, bal: 0n, value: undefined };

// ---- Sector classification ----

export type SectorState<T> =
  | { state: "valid"; sequence: bigint; record: T }
  /** All zeros: never written. */
  | { state: "empty" }
  /** Our magic but a bad checksum: a write was interrupted (or the medium decayed). */
  | { state: "torn"; why: string }
  /** A good checksum but not ours here (another cluster, version, kind or node), or not ours at all. */
  | { state: "foreign"; why: string };

/** Both copies of one logical record, and the one to trust. */
export interface RecordPair<T> {
  copies: [SectorState<T>, SectorState<T>];
  /** The valid copy with the higher sequence; undefined when neither is valid. */
  newest: { copy: 0 | 1; sequence: bigint; record: T } | undefined;
}

interface Expected {
  kind: RecordKind;
  node: number;
  clusterId: Uint8Array;
}

function isZero(bytes: Uint8Array): boolean {
  let index = 0;
  if (bytes.byteOffset % 4 === 0) {
    const words = new Uint32Array(bytes.buffer, bytes.byteOffset, bytes.length >>> 2);
    for (; index < words.length; index++) if (words[index] !== 0) return false;
    index *= 4;
  }
  for (; index < bytes.length; index++) if (bytes[index] !== 0) return false;
  return true;
}

function equalBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let index = 0; index < a.length; index++) if (a[index] !== b[index]) return false;
  return true;
}

export function clusterIdHex(id: Uint8Array): string {
  return Buffer.from(id).toString("hex");
}

export function parseClusterId(hex: string): Uint8Array {
  if (!/^[0-9a-f]{32}$/.test(hex)) throw new Error(`a cluster id is 32 lowercase hex digits, not "${hex}"`);
  return Uint8Array.from(Buffer.from(hex, "hex"));
}

/** The header fields of a sector whose checksum is good, whatever it claims to be. */
export interface SectorHeader {
  magicOk: boolean;
  formatVersion: number;
  kind: number;
  node: number;
  clusterId: Uint8Array;
  sequence: bigint;
}

function view(sector: Uint8Array): DataView {
  return new DataView(sector.buffer, sector.byteOffset, sector.byteLength);
}

const zeroChecksum = new Uint8Array(4);

/** CRC32C of the record's `length` bytes, the checksum field taken as zero. */
function recordChecksum(sector: Uint8Array, length: number): number {
  const head = crc32c(sector.subarray(0, checksumOffset));
  return crc32c(sector.subarray(checksumOffset + 4, length), crc32c(zeroChecksum, head));
}

function recordLength(sector: Uint8Array): number {
  return view(sector).getUint16(12, true);
}

export function checksumOk(sector: Uint8Array): boolean {
  const length = recordLength(sector);
  if (length < witnessHeaderBytes || length > witnessRecordBytes) return false;
  return view(sector).getUint32(checksumOffset, true) === recordChecksum(sector, length);
}

export function readHeader(sector: Uint8Array): SectorHeader {
  const data = view(sector);
  return {
    magicOk: equalBytes(sector.subarray(0, 8), witnessMagic),
    formatVersion: data.getUint16(8, true),
    kind: sector[10]!,
    node: sector[11]!,
    clusterId: sector.slice(16, 32),
    sequence: data.getBigUint64(32, true),
  };
}

const kindNames: Record<number, string> = { 1: "superblock", 2: "slot", 3: "mailbox", 4: "paxos block", 5: "decided record" };

/**
 * Classify one sector. `decodeBody` reads the body of a sector already known to be ours and in the
 * right place; it returns undefined when a field holds a value this version never writes.
 */
function classify<T>(sector: Uint8Array, expected: Expected, decodeBody: (data: DataView, sector: Uint8Array) => T | undefined): SectorState<T> {
  assert(sector.length === witnessRecordBytes, "a witness sector is one record long");
  // Only a sector without our magic can be empty: skip scanning 4 KiB of a record for zeros.
  if (sector[0] !== witnessMagic[0] && isZero(sector)) return { state: "empty" };
  const header = readHeader(sector);
  if (!checksumOk(sector)) {
    if (header.magicOk) return { state: "torn", why: "checksum mismatch (a write was interrupted or the medium decayed)" };
    return { state: "foreign", why: "not a Tandem witness record" };
  }
  if (!header.magicOk) return { state: "foreign", why: "not a Tandem witness record" };
  if (header.formatVersion !== witnessFormatVersion) return { state: "foreign", why: `witness format version ${header.formatVersion} (this build reads ${witnessFormatVersion})` };
  if (view(sector).getUint16(14, true) !== 0 || view(sector).getUint32(44, true) !== 0) return { state: "foreign", why: "a field holds a value this version never writes" };
  if (header.kind !== expected.kind || header.node !== expected.node) {
    return { state: "foreign", why: `a ${kindNames[header.kind] ?? `kind ${header.kind}`} record of node ${header.node} where a ${kindNames[expected.kind]} of node ${expected.node} belongs` };
  }
  if (!equalBytes(header.clusterId, expected.clusterId)) return { state: "foreign", why: `cluster ${clusterIdHex(header.clusterId)}` };
  const record = decodeBody(view(sector), sector);
  if (record === undefined) return { state: "foreign", why: "a field holds a value this version never writes" };
  return { state: "valid", sequence: header.sequence, record };
}

function pair<T>(first: SectorState<T>, second: SectorState<T>): RecordPair<T> {
  let newest: RecordPair<T>["newest"];
  const copies: [SectorState<T>, SectorState<T>] = [first, second];
  copies.forEach((copy, index) => {
    if (copy.state !== "valid") return;
    if (!newest || copy.sequence > newest.sequence) newest = { copy: index as 0 | 1, sequence: copy.sequence, record: copy.record };
  });
  return { copies, newest };
}

/** Which copy the next write of a record goes to: never the newest valid one. */
export function nextCopy(current: RecordPair<unknown>): { copy: 0 | 1; sequence: bigint } {
  if (!current.newest) return { copy: 0, sequence: 1n };
  return { copy: current.newest.copy === 0 ? 1 : 0, sequence: current.newest.sequence + 1n };
}

// ---- Encoding ----

function sectorWith(kind: RecordKind, node: number, clusterId: Uint8Array, sequence: bigint, length: number, fill: (data: DataView, sector: Uint8Array) => void): Uint8Array {
  assert(length >= witnessHeaderBytes && length <= witnessRecordBytes, "a record fits its sector");
  assert(clusterId.length === clusterIdBytes, "cluster ids are 16 bytes");
  assert(sequence > 0n, "record sequences start at 1 (0 is an empty sector)");
  const sector = new Uint8Array(witnessRecordBytes);
  const data = view(sector);
  sector.set(witnessMagic, 0);
  data.setUint16(8, witnessFormatVersion, true);
  sector[10] = kind;
  sector[11] = node;
  sector.set(clusterId, 16);
  data.setBigUint64(32, sequence, true);
  data.setUint16(12, length, true);
  fill(data, sector);
  data.setUint32(checksumOffset, recordChecksum(sector, length), true);
  return sector;
}

const u64Max = (1n << 64n) - 1n;

// Each record's length (the bytes its checksum covers): header plus body.
const superblockBytes = 96;
const slotIdsOffset = 116;
const mailboxBytes = 104;
const paxosBytes = 96;
const decidedBytes = 72;

function setName(sector: Uint8Array, offset: number, name: string): void {
  const bytes = new TextEncoder().encode(name);
  assert(bytes.length <= witnessNodeNameBytesMax, "node names fit their field");
  sector.set(bytes, offset);
}

function getName(sector: Uint8Array, offset: number): string | undefined {
  const field = sector.subarray(offset, offset + witnessNodeNameBytesMax);
  const end = field.indexOf(0);
  const bytes = end < 0 ? field : field.subarray(0, end);
  if (end >= 0 && !isZero(field.subarray(end))) return undefined;
  try {
    return new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch {
    return undefined;
  }
}

export function holdersMask(holders: readonly NodeIndex[]): number {
  let mask = 0;
  for (const node of holders) mask |= 1 << node;
  return mask;
}

export function holdersOf(mask: number): NodeIndex[] {
  return nodeIndexes.filter((node) => (mask & (1 << node)) !== 0);
}

/** A lease value in 16 bytes at `offset`: epoch u64, mode u8, owner u8, holders bitmask u8, forced u8. */
function setValue(data: DataView, offset: number, value: LeaseValue): void {
  assert(value.epoch >= 0n && value.epoch <= u64Max, "epochs fit 64 bits");
  data.setBigUint64(offset, value.epoch, true);
  data.setUint8(offset + 8, value.mode);
  data.setUint8(offset + 9, value.mode === LeaseMode.Solo ? value.owner : 0);
  data.setUint8(offset + 10, holdersMask(value.holders));
  data.setUint8(offset + 11, value.forced ? 1 : 0);
}

function getValue(data: DataView, offset: number): LeaseValue | undefined {
  const mode = data.getUint8(offset + 8);
  const owner = data.getUint8(offset + 9);
  const mask = data.getUint8(offset + 10);
  const forced = data.getUint8(offset + 11);
  if (mode !== LeaseMode.Shared && mode !== LeaseMode.Solo) return undefined;
  if (owner > 1 || (mode === LeaseMode.Shared && owner !== 0) || mask > 3 || forced > 1) return undefined;
  for (let index = 12; index < 16; index++) if (data.getUint8(offset + index) !== 0) return undefined;
  return { epoch: data.getBigUint64(offset, true), mode, owner: owner as NodeIndex, holders: holdersOf(mask), forced: forced === 1 };
}

export function encodeSuperblock(clusterId: Uint8Array, superblock: Superblock, sequence = 1n): Uint8Array {
  return sectorWith(RecordKind.Superblock, 0xff, clusterId, sequence, superblockBytes, (data) => {
    data.setUint32(48, superblock.recordBytes, true);
    data.setUint32(52, superblock.areaBytes, true);
    data.setBigUint64(56, BigInt(superblock.formattedAtMs), true);
    const timing = superblock.timing;
    const fields = [timing.heartbeatIntervalMs, timing.linkTimeoutMs, timing.headStartMs, timing.selfFenceTimeoutMs, timing.deadTimeoutMs, timing.watchdogTimeoutMs, timing.ioTimeoutMs, timing.clockRateBoundPpm];
    fields.forEach((value, index) => {
      assert(Number.isInteger(value) && value >= 0 && value <= 0xffffffff, "timing fields fit 32 bits");
      data.setUint32(64 + index * 4, value, true);
    });
  });
}

function decodeSuperblockBody(data: DataView): Superblock | undefined {
  if (data.getUint16(12, true) !== superblockBytes) return undefined;
  const recordBytes = data.getUint32(48, true);
  const areaBytes = data.getUint32(52, true);
  if (recordBytes !== witnessRecordBytes || areaBytes < witnessLayout.sectors * recordBytes || areaBytes % recordBytes !== 0) return undefined;
  const get = (index: number) => data.getUint32(64 + index * 4, true);
  return {
    recordBytes,
    areaBytes,
    formattedAtMs: Number(data.getBigUint64(56, true)),
    timing: {
      heartbeatIntervalMs: get(0),
      linkTimeoutMs: get(1),
      headStartMs: get(2),
      selfFenceTimeoutMs: get(3),
      deadTimeoutMs: get(4),
      watchdogTimeoutMs: get(5),
      ioTimeoutMs: get(6),
      clockRateBoundPpm: get(7),
    },
  };
}

export function encodeSlot(clusterId: Uint8Array, node: NodeIndex, slot: Slot, sequence: bigint): Uint8Array {
  const volumeIds = slot.volumeIds.slice(0, witnessSlotVolumeIdsMax);
  return sectorWith(RecordKind.Slot, node, clusterId, sequence, slotIdsOffset + 4 * volumeIds.length, (data, sector) => {
    data.setBigUint64(48, slot.heartbeat, true);
    data.setBigUint64(56, slot.epoch, true);
    data.setUint8(64, slot.role);
    data.setUint8(65, slot.truncated || slot.volumeIds.length > volumeIds.length ? 1 : 0);
    data.setUint32(68, slot.primaryCount, true);
    data.setBigUint64(72, slot.fencedEpoch, true);
    setName(sector, 80, slot.nodeName);
    data.setUint16(112, volumeIds.length, true);
    volumeIds.forEach((id, index) => {
      assert(Number.isInteger(id) && id >= 0 && id <= 0xffffffff, "volume ids fit 32 bits");
      data.setUint32(slotIdsOffset + index * 4, id, true);
    });
  });
}

function decodeSlotBody(data: DataView, sector: Uint8Array): Slot | undefined {
  const role = data.getUint8(64);
  const flags = data.getUint8(65);
  const count = data.getUint16(112, true);
  const nodeName = getName(sector, 80);
  if (role > slotRoleMax || flags > 1 || count > witnessSlotVolumeIdsMax || nodeName === undefined || data.getUint16(12, true) !== slotIdsOffset + 4 * count) return undefined;
  return {
    heartbeat: data.getBigUint64(48, true),
    epoch: data.getBigUint64(56, true),
    role: role as SlotRole,
    fencedEpoch: data.getBigUint64(72, true),
    nodeName,
    primaryCount: data.getUint32(68, true),
    volumeIds: Array.from({ length: count }, (_, index) => data.getUint32(slotIdsOffset + index * 4, true)),
    truncated: flags === 1,
  };
}

/** `recipient`: the node the mailbox is for (the other node writes it). */
export function encodeMailbox(clusterId: Uint8Array, recipient: NodeIndex, mailbox: Mailbox, sequence: bigint): Uint8Array {
  return sectorWith(RecordKind.Mailbox, recipient, clusterId, sequence, mailboxBytes, (data, sector) => {
    data.setUint8(48, mailbox.request);
    data.setBigUint64(56, mailbox.epoch, true);
    data.setBigUint64(64, mailbox.senderHeartbeat, true);
    setName(sector, 72, mailbox.fromName);
  });
}

function decodeMailboxBody(data: DataView, sector: Uint8Array): Mailbox | undefined {
  const request = data.getUint8(48);
  const fromName = getName(sector, 72);
  if (request > MailboxRequest.Fence || fromName === undefined || data.getUint16(12, true) !== mailboxBytes) return undefined;
  return { request: request as MailboxRequest, epoch: data.getBigUint64(56, true), senderHeartbeat: data.getBigUint64(64, true), fromName };
}

export function encodePaxosBlock(clusterId: Uint8Array, node: NodeIndex, block: PaxosBlock, sequence: bigint): Uint8Array {
  assert(block.bal <= block.mbal && (block.bal === 0n) === (block.value === undefined), "a block accepted a value exactly when its bal is set, and bal never exceeds mbal");
  return sectorWith(RecordKind.Paxos, node, clusterId, sequence, paxosBytes, (data) => {
    data.setBigUint64(48, block.instance, true);
    data.setBigUint64(56, block.mbal, true);
    data.setBigUint64(64, block.bal, true);
    data.setUint8(72, block.value ? 1 : 0);
    if (block.value) setValue(data, 80, block.value);
  });
}

function decodePaxosBody(data: DataView): PaxosBlock | undefined {
  const present = data.getUint8(72);
  const mbal = data.getBigUint64(56, true);
  const bal = data.getBigUint64(64, true);
  if (present > 1 || bal > mbal || (bal === 0n) !== (present === 0) || data.getUint16(12, true) !== paxosBytes) return undefined;
  const value = present ? getValue(data, 80) : undefined;
  if (present && !value) return undefined;
  return { instance: data.getBigUint64(48, true), mbal, bal, value };
}

/** `node`: the node that learned the decision and writes this copy. */
export function encodeDecided(clusterId: Uint8Array, node: NodeIndex, decided: DecidedRecord, sequence: bigint): Uint8Array {
  return sectorWith(RecordKind.Decided, node, clusterId, sequence, decidedBytes, (data) => {
    data.setBigUint64(48, decided.version, true);
    setValue(data, 56, decided.value);
  });
}

function decodeDecidedBody(data: DataView): DecidedRecord | undefined {
  if (data.getUint16(12, true) !== decidedBytes) return undefined;
  const value = getValue(data, 56);
  return value && { version: data.getBigUint64(48, true), value };
}

// ---- The whole witness at once ----

/** Everything a node reads from the witness in one IO: both copies of every record, classified. */
export interface WitnessState {
  superblock: RecordPair<Superblock>;
  slots: [RecordPair<Slot>, RecordPair<Slot>];
  mailboxes: [RecordPair<Mailbox>, RecordPair<Mailbox>];
  paxos: [RecordPair<PaxosBlock>, RecordPair<PaxosBlock>];
  decided: [RecordPair<DecidedRecord>, RecordPair<DecidedRecord>];
}

function sectorAt(area: Uint8Array, index: number): Uint8Array {
  return area.subarray(index * witnessRecordBytes, (index + 1) * witnessRecordBytes);
}

function decodePair<T>(area: Uint8Array, first: number, expected: Expected, body: (data: DataView, sector: Uint8Array) => T | undefined): RecordPair<T> {
  return pair(classify(sectorAt(area, first), expected, body), classify(sectorAt(area, first + 1), expected, body));
}

/** Decode the first witnessLayout.sectors sectors of a witness (as one read returns them). */
export function decodeWitness(area: Uint8Array, clusterId: Uint8Array): WitnessState {
  assert(area.length >= witnessLayout.sectors * witnessRecordBytes, "the read covers every record");
  const at = <T>(first: number, kind: RecordKind, node: number, body: (data: DataView, sector: Uint8Array) => T | undefined) => decodePair(area, first, { kind, node, clusterId }, body);
  return {
    superblock: at(witnessLayout.superblock, RecordKind.Superblock, 0xff, decodeSuperblockBody),
    slots: [at(witnessLayout.slot(0), RecordKind.Slot, 0, decodeSlotBody), at(witnessLayout.slot(1), RecordKind.Slot, 1, decodeSlotBody)],
    mailboxes: [at(witnessLayout.mailbox(0), RecordKind.Mailbox, 0, decodeMailboxBody), at(witnessLayout.mailbox(1), RecordKind.Mailbox, 1, decodeMailboxBody)],
    paxos: [at(witnessLayout.paxos(0), RecordKind.Paxos, 0, decodePaxosBody), at(witnessLayout.paxos(1), RecordKind.Paxos, 1, decodePaxosBody)],
    decided: [at(witnessLayout.decided(0), RecordKind.Decided, 0, decodeDecidedBody), at(witnessLayout.decided(1), RecordKind.Decided, 1, decodeDecidedBody)],
  };
}

/** The cluster a witness belongs to, read from a superblock copy with a good checksum (for `format` and `show` without a cluster id). */
export function superblockCluster(area: Uint8Array): Uint8Array | undefined {
  for (const index of [0, 1]) {
    const sector = sectorAt(area, witnessLayout.superblock + index);
    if (isZero(sector) || !checksumOk(sector)) continue;
    const header = readHeader(sector);
    if (header.magicOk && header.kind === RecordKind.Superblock) return header.clusterId;
  }
  return undefined;
}

/** The latest decided record among both nodes' copies (initialDecided when none is valid). */
export function latestDecided(state: WitnessState): DecidedRecord {
  let latest = initialDecided;
  for (const copy of state.decided) if (copy.newest && copy.newest.record.version > latest.version) latest = copy.newest.record;
  return latest;
}

/** A freshly formatted witness area: both superblock copies, every other record empty. */
export function encodeFormattedArea(clusterId: Uint8Array, superblock: Superblock): Uint8Array {
  assert(superblock.areaBytes === witnessAreaBytes, "format writes the whole area");
  const area = new Uint8Array(witnessAreaBytes);
  area.set(encodeSuperblock(clusterId, superblock, 1n), witnessLayout.superblock * witnessRecordBytes);
  area.set(encodeSuperblock(clusterId, superblock, 2n), (witnessLayout.superblock + 1) * witnessRecordBytes);
  return area;
}

export function describeValue(value: LeaseValue, names: readonly [string, string] = ["node 0", "node 1"]): string {
  const holders = value.holders.map((node) => names[node]).join(", ") || "nobody";
  const mode = value.mode === LeaseMode.Shared ? "SHARED" : `SOLO(${names[value.owner]})`;
  return `${mode}${value.forced ? " forced" : ""}, epoch ${value.epoch}, data holders: ${holders}`;
}

export function sameValue(a: LeaseValue, b: LeaseValue): boolean {
  return a.epoch === b.epoch && a.mode === b.mode && (a.mode === LeaseMode.Shared || a.owner === b.owner) && holdersMask(a.holders) === holdersMask(b.holders) && a.forced === b.forced;
}
