// The simulator's record of what the clients were told, kept apart from the workload that drives IO
// and from the cores under test (CONVENTIONS.md §3). Every block a workload writes carries a tag
// (write id, block, volume) and a pattern derived from it, so any block read back names the write
// it came from — or proves it is corrupt. From submissions, acknowledgements (mirrored or alone,
// with the epoch) and completed flushes the oracle knows, per block, which values a replica may
// hold: anything at or after the newest write that was durable when acknowledged (FUA, or acked
// before a completed FLUSH on the same node), minus writes an operator discarded when resolving a
// split brain. The checkers (checkers.ts) ask it questions; it never looks inside a node.

export const blockBytes = 4096;
const tagMagic = 0x21474154; // "TAG!"

export interface WriteRecord {
  id: number;
  volumeId: number;
  node: string;
  firstBlock: number;
  blockCount: number;
  zero: boolean;
  fua: boolean;
  submittedUs: number;
  ackedUs: number | undefined;
  ok: boolean | undefined;
  mirrored: boolean | undefined;
  epoch: number | undefined;
  durable: boolean;
  durableUs: number | undefined;
  /** Made durable only by a flush that completed without the peer: promised on `node` alone. */
  durableAlone: boolean;
  discarded: boolean;
}

/** Fill `target` (one block) with the tagged pattern of write `id` at `block`. */
export function fillBlock(target: Uint8Array, id: number, volumeId: number, block: number): void {
  const view = new DataView(target.buffer, target.byteOffset, blockBytes);
  view.setUint32(0, tagMagic, true);
  view.setUint32(4, id, true);
  view.setUint32(8, block, true);
  view.setUint32(12, volumeId, true);
  let state = (Math.imul(id, 0x9e3779b1) ^ Math.imul(block + 1, 0x85ebca6b) ^ volumeId) >>> 0 || 1;
  for (let offset = 16; offset < blockBytes; offset += 4) {
    state ^= state << 13;
    state ^= state >>> 17;
    state ^= state << 5;
    view.setUint32(offset, state >>> 0, true);
  }
}

export type BlockValue = { kind: "zero" } | { kind: "write"; id: number } | { kind: "corrupt"; reason: string };

const scratch = new Uint8Array(blockBytes);

/** Which write a block's bytes came from. */
export function identifyBlock(bytes: Uint8Array, volumeId: number, block: number): BlockValue {
  const view = new DataView(bytes.buffer, bytes.byteOffset, blockBytes);
  if (view.getUint32(0, true) !== tagMagic) {
    for (let index = 0; index < blockBytes; index++) if (bytes[index] !== 0) return { kind: "corrupt", reason: "neither zeroes nor a tagged block" };
    return { kind: "zero" };
  }
  const id = view.getUint32(4, true);
  if (view.getUint32(8, true) !== block || view.getUint32(12, true) !== volumeId) return { kind: "corrupt", reason: `tag of write #${id} names block ${view.getUint32(8, true)} of volume ${view.getUint32(12, true)}` };
  fillBlock(scratch, id, volumeId, block);
  for (let index = 16; index < blockBytes; index++) if (bytes[index] !== scratch[index]) return { kind: "corrupt", reason: `write #${id}'s pattern differs at byte ${index}` };
  return { kind: "write", id };
}

export function describeValue(value: BlockValue): string {
  return value.kind === "zero" ? "zeroes" : value.kind === "write" ? `write #${value.id}` : `corrupt data (${value.reason})`;
}

export class Oracle {
  readonly writes = new Map<number, WriteRecord>();
  /** Per volume, per block: writes in submission order. */
  private readonly histories = new Map<number, WriteRecord[][]>();
  /** Acknowledged, not yet covered by a flush, per node and volume. */
  private readonly unflushed = new Map<string, Set<WriteRecord>>();
  /** Writes acknowledged without the peer since the two nodes were last in sync, per volume and node. */
  readonly aloneSinceSync = new Map<number, Map<string, WriteRecord[]>>();
  /** Mirrored writes made durable by a flush without the peer since the last sync, per volume and node. */
  private readonly durableAloneSinceSync = new Map<number, Map<string, WriteRecord[]>>();
  /** Nodes that started (or may have started) a generation of their own since the last sync, and when. */
  readonly generationSinceSync = new Map<number, Map<string, number>>();
  /** Nodes an operator forced to primary without their peer since the last sync, per volume. */
  private readonly forcedSinceSync = new Map<number, Map<string, number>>();
  /** Nodes that reported being in sync since the last write made alone, and when. */
  private readonly syncedFlags = new Map<number, Map<string, number>>();
  /** When a source last reported the end of a resync (the sync point its target's report refers to). */
  private readonly sourceSyncedUs = new Map<number, number>();
  /** Nodes that acknowledged writes in each (volume, epoch). */
  readonly epochWriters = new Map<string, Set<string>>();
  /**
   * The last moment data could legitimately vanish from what a reader sees: a crash, a forced
   * promotion, an operator discarding a side's writes, a disk replaced, a failed flush dropping
   * cached writes (Linux). A read must see every write acknowledged before it and after this.
   */
  disturbedUs = 0;
  private nextId = 1;

  constructor(readonly nodes: [string, string]) {}

  addVolume(volumeId: number, blocks: number): void {
    this.histories.set(volumeId, Array.from({ length: blocks }, () => []));
    this.aloneSinceSync.set(volumeId, new Map(this.nodes.map((node) => [node, []])));
    this.durableAloneSinceSync.set(volumeId, new Map(this.nodes.map((node) => [node, []])));
    this.generationSinceSync.set(volumeId, new Map());
    this.forcedSinceSync.set(volumeId, new Map());
    this.syncedFlags.set(volumeId, new Map());
  }

  submitWrite(volumeId: number, node: string, firstBlock: number, blockCount: number, zero: boolean, fua: boolean, nowUs: number): WriteRecord {
    const record: WriteRecord = {
      id: this.nextId++,
      volumeId,
      node,
      firstBlock,
      blockCount,
      zero,
      fua,
      submittedUs: nowUs,
      ackedUs: undefined,
      ok: undefined,
      mirrored: undefined,
      epoch: undefined,
      durable: false,
      durableUs: undefined,
      durableAlone: false,
      discarded: false,
    };
    this.writes.set(record.id, record);
    const history = this.histories.get(volumeId)!;
    for (let block = firstBlock; block < firstBlock + blockCount; block++) history[block]!.push(record);
    return record;
  }

  ackWrite(record: WriteRecord, ok: boolean, mirrored: boolean | undefined, epoch: number | undefined, nowUs: number): void {
    record.ackedUs = nowUs;
    record.ok = ok;
    record.mirrored = mirrored;
    record.epoch = epoch;
    if (!ok) return;
    const key = `${record.volumeId}:${epoch}`;
    const writers = this.epochWriters.get(key) ?? new Set();
    writers.add(record.node);
    this.epochWriters.set(key, writers);
    if (record.fua) this.makeDurable(record, nowUs);
    else {
      const set = this.unflushed.get(`${record.node}:${record.volumeId}`) ?? new Set();
      set.add(record);
      this.unflushed.set(`${record.node}:${record.volumeId}`, set);
    }
    if (mirrored === false) {
      this.aloneSinceSync.get(record.volumeId)!.get(record.node)!.push(record);
      this.syncedFlags.get(record.volumeId)!.clear();
    }
  }

  private makeDurable(record: WriteRecord, nowUs: number, alone = false): void {
    if (record.durable) return;
    record.durable = true;
    record.durableUs = nowUs;
    record.durableAlone = alone;
    if (!alone) return;
    this.durableAloneSinceSync.get(record.volumeId)!.get(record.node)!.push(record);
    if (this.forcedSinceSync.get(record.volumeId)!.has(this.peer(record.node))) record.discarded = true;
  }

  private peer(node: string): string {
    return this.nodes[0] === node ? this.nodes[1] : this.nodes[0];
  }

  /** The writes a flush submitted now on `node` will cover when it completes. */
  flushSnapshot(volumeId: number, node: string): WriteRecord[] {
    return [...(this.unflushed.get(`${node}:${volumeId}`) ?? [])];
  }

  /**
   * A flush completed on `node`. `mirrored`: both replicas flushed. A flush that completed without
   * the peer vouches for its writes on this node only: the peer may have lost them in a crash before
   * they reached its disk, so they count like writes made alone (a forced promotion of the peer or
   * a split-brain resolution against this node may take them away).
   */
  flushCompleted(volumeId: number, node: string, covered: WriteRecord[], nowUs: number, mirrored: boolean): void {
    const set = this.unflushed.get(`${node}:${volumeId}`);
    for (const record of covered) {
      // Gone from the set: made durable by another flush already, or lost before this one ended.
      if (!set?.has(record)) continue;
      this.makeDurable(record, nowUs, !mirrored && record.mirrored === true);
      set.delete(record);
    }
  }

  /**
   * A flush failed on `node` (on Linux it also drops the cached writes it covered): like a crash
   * of the cache, what was acknowledged and not yet durable there is no longer promised to a later
   * flush (the client was told by the failed one; the node may take them back from its peer).
   */
  cacheDropped(volumeId: number, node: string): void {
    this.unflushed.get(`${node}:${volumeId}`)?.clear();
  }

  /**
   * A node died: the writes it acknowledged and had not flushed were only promised to its own
   * clients (who died with it), so no later flush vouches for them. Writes acknowledged by the
   * surviving node stay promised to that node's next flush.
   */
  crashed(node: string): void {
    for (const [key, set] of this.unflushed) if (key.startsWith(`${node}:`)) set.clear();
  }

  /**
   * A node reported being in sync. A resync target holds everything the source had when it reports
   * (the source may still die before recording its side); otherwise both must have reported.
   */
  synced(volumeId: number, node: string, asTarget: boolean, nowUs: number): void {
    const flags = this.syncedFlags.get(volumeId)!;
    flags.set(node, nowUs);
    if (!asTarget) this.sourceSyncedUs.set(volumeId, nowUs);
    if (!asTarget && flags.size < this.nodes.length) return;
    // The sync point: the first report of the pair (a target holds what its source had when the
    // source recorded the end). What happened after it, before the last report, is not covered.
    const cutoff = asTarget ? Math.min(this.sourceSyncedUs.get(volumeId) ?? nowUs, ...flags.values()) : Math.min(...flags.values());
    for (const list of this.aloneSinceSync.get(volumeId)!.values()) {
      const kept = list.filter((record) => (record.ackedUs ?? 0) > cutoff);
      list.length = 0;
      list.push(...kept);
    }
    for (const list of this.durableAloneSinceSync.get(volumeId)!.values()) {
      const kept = list.filter((record) => (record.durableUs ?? 0) > cutoff);
      for (const record of list) if (!kept.includes(record)) record.durableAlone = false; // the resync put them on both
      list.length = 0;
      list.push(...kept);
    }
    for (const since of [this.generationSinceSync.get(volumeId)!, this.forcedSinceSync.get(volumeId)!]) {
      for (const [name, atUs] of [...since]) if (atUs <= cutoff) since.delete(name);
    }
    flags.clear();
  }

  disturb(nowUs: number): void {
    this.disturbedUs = Math.max(this.disturbedUs, nowUs);
  }

  /**
   * Data a node holds before the run (a backing imported with its data): written by `node`,
   * durable there, and promised to both replicas once they are in sync.
   */
  preload(volumeId: number, node: string, blocks: number[]): WriteRecord[] {
    return blocks.map((block) => {
      const record = this.submitWrite(volumeId, node, block, 1, false, false, 0);
      record.ackedUs = 0;
      record.ok = true;
      record.mirrored = true;
      record.epoch = 1;
      record.durable = true;
      record.durableUs = 0;
      return record;
    });
  }

  /**
   * Read-after-write: the values a read of `block` on `node` submitted at `submittedUs` may return,
   * or undefined when nothing binds it. The newest write acknowledged before the read (on this
   * node, or mirrored), with no disturbance since, or anything submitted after it.
   */
  readAfterWrite(volumeId: number, node: string, block: number, submittedUs: number): { newestAcked: WriteRecord; values: Set<number> } | undefined {
    const history = this.history(volumeId, block);
    for (let position = history.length - 1; position >= 0; position--) {
      const record = history[position]!;
      if (record.ok !== true || record.ackedUs === undefined || record.ackedUs >= submittedUs) continue;
      if (record.ackedUs < this.disturbedUs || record.discarded) return undefined;
      if (record.node !== node && record.mirrored !== true) continue;
      // The peer's acknowledgement after `node` was forced to primary (the peer stalled, then
      // completed what `node` had acknowledged as its secondary): a forced promotion discards it.
      const forcedUs = this.forcedSinceSync.get(volumeId)!.get(node);
      if (record.node !== node && forcedUs !== undefined && record.ackedUs > forcedUs) continue;
      const values = new Set<number>();
      for (let later = position; later < history.length; later++) values.add(history[later]!.zero ? 0 : history[later]!.id);
      return { newestAcked: record, values };
    }
    return undefined;
  }

  /**
   * The operator forced `node` to primary while its peer was unreachable. That discards every
   * write of the peer's that `node` lacks (src/node/failover.ts): while `node` stands forced, what
   * only the peer's own flushes made durable (before or after) is no longer promised.
   */
  forcedPrimary(volumeId: number, node: string, nowUs: number): void {
    this.forcedSinceSync.get(volumeId)!.set(node, nowUs);
    for (const record of this.durableAloneSinceSync.get(volumeId)!.get(this.peer(node))!) record.discarded = true;
  }

  /**
   * Whether `node` went its own way since the last sync (forced to primary, or started a generation
   * of its own): it need not hold mirrored writes that only its peer's flushes made durable.
   */
  diverged(volumeId: number, node: string): boolean {
    return this.forcedSinceSync.get(volumeId)!.has(node) || this.generationSinceSync.get(volumeId)!.has(node);
  }

  generationStarted(volumeId: number, node: string, nowUs: number): void {
    this.generationSinceSync.get(volumeId)!.set(node, nowUs);
    this.syncedFlags.get(volumeId)!.clear();
  }

  /**
   * The operator resolved a split brain: the victim's writes made alone since the last sync are
   * gone, and so may be the mirrored writes only the victim's own flushes made durable.
   */
  discard(volumeId: number, victim: string): number {
    const list = this.aloneSinceSync.get(volumeId)!.get(victim)!;
    for (const record of list) record.discarded = true;
    const count = list.length;
    list.length = 0;
    const durableAlone = this.durableAloneSinceSync.get(volumeId)!.get(victim)!;
    for (const record of durableAlone) record.discarded = true;
    durableAlone.length = 0;
    // What the victim acknowledged and had not made durable may be missing on the keeper (which
    // may have lost it in a crash): no later flush on the victim vouches for it.
    this.unflushed.get(`${victim}:${volumeId}`)?.clear();
    return count;
  }

  history(volumeId: number, block: number): WriteRecord[] {
    return this.histories.get(volumeId)![block]!;
  }

  blockCount(volumeId: number): number {
    return this.histories.get(volumeId)!.length;
  }

  /**
   * Values a replica may hold for a block: the newest durable (non-discarded) write that `counts`,
   * and every write submitted after it. Returns the index of that write (-1: none) too.
   */
  allowed(volumeId: number, block: number, counts: (record: WriteRecord) => boolean = () => true): { newestDurable: WriteRecord | undefined; values: Set<number> } {
    const history = this.history(volumeId, block);
    let index = -1;
    for (let position = history.length - 1; position >= 0; position--) {
      const record = history[position]!;
      if (record.durable && !record.discarded && counts(record)) {
        index = position;
        break;
      }
    }
    const values = new Set<number>();
    if (index === -1) values.add(0);
    for (let position = Math.max(0, index); position < history.length; position++) {
      const record = history[position]!;
      values.add(record.zero ? 0 : record.id);
    }
    return { newestDurable: index === -1 ? undefined : history[index], values };
  }
}
