// Two quorum drivers over an in-memory witness and a link the test controls, on manual clocks: for
// scripted scenarios of the lease (test/unit/quorum-lease.test.ts). Witness IO completes at once
// unless the test makes a node's path fail or hang; `advance(ms)` moves both clocks and fires their
// timers; the link carries the cores' messages instantly while it is up. Everything the nodes do is
// kept (grants, roles, persisted state, reports) for the assertions.
import { witnessRecordBytes } from "../../src/constants.ts";
import { defaultQuorumTiming, type QuorumTiming, timingToWitness } from "../../src/quorum/config.ts";
import { QuorumDriver, type WitnessDisk } from "../../src/quorum/driver.ts";
import { decodeWitness, encodeFormattedArea, initialDecided, type NodeIndex, witnessLayout, type WitnessState } from "../../src/quorum/format.ts";
import type { QuorumBugs, QuorumPersisted, QuorumReport } from "../../src/quorum/lease.ts";
import type { QuorumMessage } from "../../src/quorum/message.ts";
import type { Grant } from "../../src/replica/types.ts";

export const pairCluster = Uint8Array.from({ length: 16 }, (_, index) => index + 1);

export class PairNode {
  driver!: QuorumDriver;
  nowMs = 0;
  timers: { atMs: number; callback: () => void; cancelled: boolean }[] = [];
  grants = new Map<number, Grant>();
  /** Every grant change, in order. */
  grantLog: { volumeId: number; grant: Grant }[] = [];
  roles: Map<number, boolean>;
  persisted: QuorumPersisted = { outdatedEpoch: 0n, lastDecided: initialDecided, promotionEpoch: 0n };
  reports: QuorumReport[] = [];
  watchdogFeeds = 0;
  witness: "ok" | "fail" | "hang" = "ok";
  /** Decides each IO's fate when set (overrides `witness`): for faults tied to a particular IO. */
  ioFate: ((io: { kind: "read" | "write"; sector: number; bytes?: Uint8Array }) => "ok" | "fail" | "hang") | undefined;
  hungIo: (() => void)[] = [];
  running = true;

  constructor(
    readonly index: NodeIndex,
    readonly pair: QuorumPair,
    primaries: number[],
    volumes: number[],
  ) {
    this.roles = new Map(volumes.map((id) => [id, primaries.includes(id)]));
  }

  start(): void {
    this.timers = [];
    this.grants = new Map();
    const disk: WitnessDisk = {
      read: (sector, count, done) => this.io({ kind: "read", sector }, () => done(null, this.pair.area.slice(sector * witnessRecordBytes, (sector + count) * witnessRecordBytes)), () => done("EIO")),
      write: (sector, bytes, done) =>
        this.io(
          { kind: "write", sector, bytes },
          () => {
            this.pair.area.set(bytes, sector * witnessRecordBytes);
            done(null);
          },
          () => done("EIO"),
        ),
    };
    this.driver = new QuorumDriver({
      me: this.index,
      names: ["a", "b"],
      clusterId: pairCluster,
      timing: this.pair.timing,
      random: { fill: (bytes) => bytes.fill(7) },
      persisted: this.persisted,
      volumes: [...this.roles].map(([id, primary]) => ({ id, primary })),
      bugs: this.pair.bugs,
      disk,
      clock: {
        now: () => this.nowMs,
        after: (delayMs, callback) => {
          const timer = { atMs: this.nowMs + delayMs, callback, cancelled: false };
          this.timers.push(timer);
          return { cancel: () => (timer.cancelled = true) };
        },
      },
      host: {
        grants: (changes) => {
          for (const change of changes) this.grants.set(change.volumeId, change.grant);
          this.grantLog.push(...changes);
        },
        promote: (volumeId) => this.roles.set(volumeId, true),
        demote: (volumeId) => this.roles.set(volumeId, false),
        persist: (state) => (this.persisted = state),
        sendPeer: (message) => this.pair.send(this.index, message),
        dropLink: () => this.pair.dropLink(),
        feedWatchdog: () => this.watchdogFeeds++,
        report: (report) => this.reports.push(report),
      },
    });
    this.driver.start();
  }

  private io(io: { kind: "read" | "write"; sector: number; bytes?: Uint8Array }, succeed: () => void, fail: () => void): void {
    const fate = this.ioFate ? this.ioFate(io) : this.witness;
    if (fate === "fail") return fail();
    if (fate === "hang") {
      this.hungIo.push(succeed);
      return;
    }
    succeed();
  }

  /** The volumes this node may write now. */
  writable(): number[] {
    return [...this.grants].filter(([, grant]) => grant.kind === "write").map(([id]) => id).sort();
  }

  report<K extends QuorumReport["kind"]>(kind: K): Extract<QuorumReport, { kind: K }>[] {
    return this.reports.filter((report) => report.kind === kind) as Extract<QuorumReport, { kind: K }>[];
  }
}

export class QuorumPair {
  readonly area: Uint8Array;
  readonly nodes: [PairNode, PairNode];
  linkUp = false;
  /** Events for a stopped node (`stop`), handled in order when it resumes, as a kernel queues them. */
  private readonly held: [(() => void)[], (() => void)[]] = [[], []];

  constructor(
    options: { primariesOnA?: number[]; volumes?: number[]; timing?: QuorumTiming; bugs?: QuorumBugs } = {},
    readonly timing: QuorumTiming = options.timing ?? defaultQuorumTiming,
    readonly bugs: QuorumBugs = options.bugs ?? {},
  ) {
    const volumes = options.volumes ?? [1, 2, 3];
    const onA = options.primariesOnA ?? [1, 2];
    this.area = encodeFormattedArea(pairCluster, { recordBytes: witnessRecordBytes, areaBytes: 128 * 1024, formattedAtMs: 0, timing: timingToWitness(timing) }).slice(0, witnessLayout.sectors * witnessRecordBytes);
    this.nodes = [new PairNode(0, this, onA, volumes), new PairNode(1, this, volumes.filter((id) => !onA.includes(id)), volumes)];
  }

  get a(): PairNode {
    return this.nodes[0];
  }

  get b(): PairNode {
    return this.nodes[1];
  }

  start(): void {
    for (const node of this.nodes) node.start();
    this.connect();
  }

  /** A new connection: both ends hear linkUp (a stopped node when it resumes). */
  connect(): void {
    this.linkUp = true;
    for (const node of this.nodes) this.deliver(node, () => node.driver.linkUp());
  }

  private deliver(node: PairNode, run: () => void): void {
    if (node.running) run();
    else this.held[node.index].push(run);
  }

  /** A silent cut: nobody is told; the cores notice the silence. */
  cut(): void {
    this.linkUp = false;
  }

  private closing = false;

  /** A core dropped the link: both ends hear it at the next step (closing is asynchronous). */
  dropLink(): void {
    if (!this.linkUp) return;
    this.linkUp = false;
    this.closing = true;
  }

  send(from: NodeIndex, message: QuorumMessage): void {
    if (!this.linkUp) return;
    const to = this.nodes[1 - from]!;
    this.deliver(to, () => to.driver.peerMessage(message));
  }

  /** Stop a node's process (SIGSTOP): its clock runs on, it handles nothing. */
  stop(node: PairNode): void {
    node.running = false;
  }

  resume(node: PairNode): void {
    node.running = true;
    const held = this.held[node.index].splice(0);
    if (held.length === 0) node.driver.synced(false); // any event: the driver catches up on time first
    for (const run of held) run();
  }

  /** Both clocks move by `ms`, in 10 ms steps, firing due timers (a stopped node's timers do not fire). */
  advance(ms: number): void {
    for (let step = 0; step < ms; step += 10) {
      if (this.closing) {
        this.closing = false;
        for (const node of this.nodes) this.deliver(node, () => node.driver.linkDown("closed"));
      }
      for (const node of this.nodes) {
        node.nowMs += 10;
        if (!node.running) continue;
        const due = node.timers.filter((timer) => !timer.cancelled && timer.atMs <= node.nowMs);
        node.timers = node.timers.filter((timer) => !timer.cancelled && timer.atMs > node.nowMs);
        for (const timer of due) if (!timer.cancelled) timer.callback();
      }
    }
  }

  /** Advance until `check` holds; returns the ms it took, throws after `limitMs`. */
  until(what: string, check: () => boolean, limitMs = 30_000): number {
    for (let elapsed = 0; elapsed <= limitMs; elapsed += 10) {
      if (check()) return elapsed;
      this.advance(10);
    }
    throw new Error(`${what}: not within ${limitMs} ms of simulated time`);
  }

  state(): WitnessState {
    return decodeWitness(this.area, pairCluster);
  }
}
