// The write authority of a node with a witness (DESIGN.md §5): the quorum driver (src/quorum/) decides
// who may write each volume, and this adapter speaks for it to the replica driver through the
// WriteAuthority interface. `grant` answers from the quorum core's grants; listeners hear every grant
// change; the replication link's up/down reports become the core's linkUp/linkDown events; the
// core's peer message rides the replication link (encoded by src/quorum/message.ts, carried as
// MessageType.Quorum) and its dropLink closes the connection. Role changes the core decides
// (promote, demote) and the state it asks to keep (persist) go to the node through `host`, which
// makes them durable before it returns — the core's contract is "durable before the next witness
// write", and the witness disk's IO is asynchronous, so a synchronous write here keeps it.
import { TandemError } from "../../common/errors.ts";
import type { Logger } from "../../common/log.ts";
import type { QuorumTiming } from "../../quorum/config.ts";
import { type LatencyFigures, type QuorumClock, QuorumDriver, type WitnessDisk } from "../../quorum/driver.ts";
import type { NodeIndex } from "../../quorum/format.ts";
import type { QuorumBugs, QuorumPersisted, QuorumReport, QuorumStatus } from "../../quorum/lease.ts";
import { decodeQuorumMessage, encodeQuorumMessage, QuorumMessageError } from "../../quorum/message.ts";
import type { Random, WriteAuthority } from "../../replica/io.ts";
import type { Grant } from "../../replica/types.ts";

/** What the node does for the quorum's decisions. */
export interface QuorumAuthorityHost {
  /** Send the core's message on the replication link. */
  sendPeer(payload: Uint8Array): void;
  dropLink(reason: string): void;
  /** Grants changed (after listeners were told): freeze or thaw the volumes' gates. */
  grantsChanged?(changes: { volumeId: number; grant: Grant }[]): void;
  /** This node became (promote) or stopped being (demote) the volume's primary in `epoch`: persist it. */
  roleChanged(volumeId: number, primary: boolean, epoch: bigint): void;
  persist(state: QuorumPersisted): void;
  feedWatchdog?(): void;
  report?(report: QuorumReport): void;
}

export interface QuorumAuthorityOptions {
  me: NodeIndex;
  names: readonly [string, string];
  clusterId: Uint8Array;
  timing: QuorumTiming;
  disk: WitnessDisk;
  clock: QuorumClock;
  random: Random;
  persisted?: QuorumPersisted;
  host: QuorumAuthorityHost;
  logger?: Logger;
  tickMs?: number;
  /** Planted quorum bugs, for the simulator only. */
  bugs?: QuorumBugs;
  /** Simulators and tests: a tick the core called quiet that acts throws (QuorumDriver). */
  strictQuietTicks?: boolean;
}

export class QuorumWriteAuthority implements WriteAuthority {
  readonly driver: QuorumDriver;
  private readonly roles = new Map<number, boolean>();
  private readonly listeners = new Set<(volumeId: number) => void>();
  private badMessages = 0;

  constructor(private readonly options: QuorumAuthorityOptions) {
    const host = options.host;
    this.driver = new QuorumDriver({
      me: options.me,
      names: options.names,
      clusterId: options.clusterId,
      timing: options.timing,
      random: options.random,
      persisted: options.persisted,
      disk: options.disk,
      clock: options.clock,
      tickMs: options.tickMs,
      logger: options.logger,
      bugs: options.bugs,
      strictQuietTicks: options.strictQuietTicks,
      host: {
        grants: (changes) => {
          for (const { volumeId } of changes) for (const listener of this.listeners) listener(volumeId);
          host.grantsChanged?.(changes);
        },
        promote: (volumeId, epoch) => this.roleChanged(volumeId, true, epoch),
        demote: (volumeId, epoch) => this.roleChanged(volumeId, false, epoch),
        persist: (state) => host.persist(state),
        sendPeer: (message) => host.sendPeer(encodeQuorumMessage(message)),
        dropLink: (reason) => host.dropLink(reason),
        feedWatchdog: () => host.feedWatchdog?.(),
        report: (report) => host.report?.(report),
      },
    });
  }

  start(): void {
    this.driver.start();
  }

  stop(): void {
    this.driver.stop();
  }

  /** Bring the lease up to date with the clock before client IO is admitted (see QuorumDriver.catchUpNow). */
  catchUp(): void {
    this.driver.catchUpNow();
  }

  grant(volumeId: number): Grant {
    if (!this.roles.has(volumeId)) return { kind: "frozen", reason: "the volume is not known to the quorum yet" };
    return this.driver.grant(volumeId);
  }

  subscribe(listener: (volumeId: number) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  linkChanged(up: boolean): void {
    if (up) this.driver.linkUp();
    else this.driver.linkDown("the replication link is down");
  }

  /** A quorum message from the peer, as the replication link delivered it. */
  peerMessage(payload: Uint8Array): void {
    try {
      this.driver.peerMessage(decodeQuorumMessage(payload));
    } catch (error) {
      if (!(error instanceof QuorumMessageError)) throw error;
      this.badMessages++;
      this.options.logger?.warn("ignored a malformed quorum message from the peer", { reason: error.message, count: this.badMessages });
    }
  }

  /** A volume this node opened, and whether it is its primary (from the node's persisted roles). */
  setVolume(volumeId: number, primary: boolean): void {
    this.roles.set(volumeId, primary);
    this.pushVolumes();
  }

  removeVolume(volumeId: number): void {
    if (this.roles.delete(volumeId)) this.pushVolumes();
  }

  role(volumeId: number): boolean | undefined {
    return this.roles.get(volumeId);
  }

  /** Every volume is in sync with the peer (the replica layer says so). */
  synced(synced: boolean): void {
    this.driver.synced(synced);
  }

  /** `tandem failover --force`: win a new epoch although this node does not hold the latest data. */
  forcePromotion(): Promise<unknown> {
    // A refusal (connected, still starting, the peer not provably fenced, a lost ballot) is the
    // operator's precondition, not a fault of the daemon: its code says so, and its message is the core's.
    return new Promise((resolve, reject) => this.driver.forcePromotion((error, result) => (error === null ? resolve(result) : reject(new TandemError("failed_precondition", error)))));
  }

  status(): QuorumStatus & { latency: { read: LatencyFigures; write: LatencyFigures }; ioOutstandingMs: number | null } {
    return this.driver.status();
  }

  private roleChanged(volumeId: number, primary: boolean, epoch: bigint): void {
    if (!this.roles.has(volumeId)) return;
    this.roles.set(volumeId, primary);
    this.options.host.roleChanged(volumeId, primary, epoch);
  }

  private pushVolumes(): void {
    this.driver.volumes([...this.roles].map(([id, primary]) => ({ id, primary })));
  }
}
