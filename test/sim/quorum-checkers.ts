// The quorum simulator's checkers, by the names of DESIGN.md §5's rules, separate from the workload
// (CONVENTIONS.md §3). Each states a global invariant over what the nodes do (their grants, their
// decisions, their reports) and the simulation's ground truth (who runs, the link, the witness), and
// says WHY it failed with the state that shows it. The simulation calls `observe` after every event
// a node handles and `periodic` on a fixed real-time beat.
import { describeValue, initialDecided, LeaseMode, type LeaseValue, sameValue } from "../../src/quorum/format.ts";
import type { QuorumReport } from "../../src/quorum/lease.ts";
import type { Grant } from "../../src/replica/types.ts";

export type FailureClass = "crash" | "correctness" | "liveness";

export interface QuorumFailure {
  class: FailureClass;
  checker: string;
  message: string;
}

/** What the checkers need to know about one node at an instant. */
export interface CheckedNode {
  index: number;
  name: string;
  /** Alive and not paused: it acts on what it holds. */
  running: boolean;
  grants: ReadonlyMap<number, Grant>;
  /** The core's phase and newest record (undefined while crashed). */
  phase: string | undefined;
  latestEpoch: bigint | undefined;
  /** This node's clock now and at the start of its last heartbeat write that succeeded (ms). */
  localNowMs: number;
  lastHeartbeatStartOkMs: number | undefined;
}

export interface Bounds {
  selfFenceTimeoutMs: number;
  tickMs: number;
  names: [string, string];
}

const fmt = (us: number) => `${(us / 1000).toFixed(1)} ms`;

export class QuorumCheckers {
  readonly failures: QuorumFailure[] = [];
  /** version → decided value, from every node's reports. */
  readonly decisions = new Map<bigint, LeaseValue>([[0n, initialDecided.value]]);
  /** node → the newest epoch some other node judged it fenced in, and when. */
  private readonly fencedFor = new Map<number, { epoch: bigint; sinceUs: number; by: string; evidence: string }>();
  private readonly seen = new Set<string>();

  constructor(private readonly bounds: Bounds) {}

  fail(failureClass: FailureClass, checker: string, message: string): void {
    // One failure per checker is enough to replay; more would bury it.
    if (this.seen.has(checker)) return;
    this.seen.add(checker);
    this.failures.push({ class: failureClass, checker, message });
  }

  private name(node: number): string {
    return this.bounds.names[node]!;
  }

  private describe(value: LeaseValue | undefined): string {
    return value ? describeValue(value, this.bounds.names) : "(unknown)";
  }

  /** A node reported something: decisions, fence judgements, promotions. */
  report(node: CheckedNode, report: QuorumReport, peer: CheckedNode, nowUs: number): void {
    switch (report.kind) {
      case "decided": {
        const { version, value } = report.record;
        const known = this.decisions.get(version);
        if (known && !sameValue(known, value)) {
          this.fail("correctness", "rule1.oneOwnerPerEpoch", `version ${version} decided twice: ${this.describe(known)} and, at ${node.name} (from ${report.source}) at ${fmt(nowUs)}, ${this.describe(value)}`);
        }
        this.decisions.set(version, value);
        if (value.mode === LeaseMode.Solo && !value.forced) {
          const previous = this.decisions.get(version - 1n);
          if (previous && !previous.holders.includes(value.owner)) {
            this.fail("correctness", "rule3.onlyHoldersWin", `version ${version} went to ${this.name(value.owner)} automatically at ${fmt(nowUs)}, but version ${version - 1n} (${this.describe(previous)}) does not list it as a data holder`);
          }
        }
        return;
      }
      case "conflict":
        this.fail("correctness", "rule1.oneOwnerPerEpoch", `${node.name} saw two values for version ${report.version}: ${this.describe(report.known)} and ${this.describe(report.other)} (${report.source})`);
        return;
      case "peerFenced": {
        const before = this.fencedFor.get(peer.index);
        if (!before || report.epoch > before.epoch) this.fencedFor.set(peer.index, { epoch: report.epoch, sinceUs: nowUs, by: node.name, evidence: report.evidence });
        this.checkFenced(peer, nowUs, "rule4.leaseMargin");
        return;
      }
      case "promoted": {
        const decided = this.decisions.get(report.epoch);
        if (!decided || decided.mode !== LeaseMode.Solo || decided.owner !== node.index) {
          this.fail("correctness", "onlyHoldersPromote", `${node.name} promoted volumes ${report.volumes.join(", ")} in epoch ${report.epoch} at ${fmt(nowUs)}, which it does not own (${this.describe(decided)})`);
        } else if (!decided.forced) {
          const previous = this.decisions.get(report.epoch - 1n);
          if (previous && !previous.holders.includes(node.index)) this.fail("correctness", "onlyHoldersPromote", `${node.name} promoted without --force in epoch ${report.epoch}, but it was not a data holder in ${this.describe(previous)}`);
        }
        for (const [volumeId, grant] of peer.grants) {
          if (peer.running && grant.kind === "write" && BigInt(grant.epoch) < report.epoch) {
            this.fail("correctness", "rule5.promoteOnlyFenced", `${node.name} promoted the volumes of ${peer.name} in epoch ${report.epoch} (evidence: ${report.evidence}) at ${fmt(nowUs)} while ${peer.name} still accepts writes on volume ${volumeId} in epoch ${grant.epoch}`);
          }
        }
        return;
      }
      default:
        return;
    }
  }

  /**
   * A node judged fenced for epoch E must not accept writes without its peer in any epoch ≤ E from
   * then on (once the two are connected again, writes are mirrored and the judgement is moot).
   */
  private checkFenced(node: CheckedNode, nowUs: number, checker: string): void {
    const fenced = this.fencedFor.get(node.index);
    if (!fenced || !node.running || nowUs < fenced.sinceUs || node.phase === "connected") return;
    for (const [volumeId, grant] of node.grants) {
      if (grant.kind === "write" && BigInt(grant.epoch) <= fenced.epoch) {
        this.fail("correctness", checker, `${fenced.by} judged ${node.name} fenced for epoch ${fenced.epoch} (${fenced.evidence}) at ${fmt(fenced.sinceUs)}, but at ${fmt(nowUs)} ${node.name} accepts writes on volume ${volumeId} in epoch ${grant.epoch}`);
      }
    }
  }

  /** After every event a node handled, and whenever who runs changes. */
  observe(nodes: [CheckedNode, CheckedNode], nowUs: number): void {
    // Rule 1: never two writers for one volume.
    const [first, second] = nodes;
    if (first.running && second.running) {
      for (const [volumeId, grant] of first.grants) {
        const other = second.grants.get(volumeId);
        if (grant.kind === "write" && other?.kind === "write") this.fail("correctness", "rule1.singleWriter", `volume ${volumeId} accepts writes on ${first.name} (epoch ${grant.epoch}) and ${second.name} (epoch ${other.epoch}) at ${fmt(nowUs)}`);
      }
    }
    for (const node of nodes) {
      if (!node.running || node.phase === undefined) continue;
      let writes: [number, Grant][] | undefined;
      for (const entry of node.grants) if (entry[1].kind === "write") (writes ??= []).push(entry);
      if (!writes) {
        this.checkFenced(node, nowUs, "rule4.leaseMargin");
        continue;
      }
      // Rule 2: without the peer, only the owner of the newest epoch writes, in that epoch.
      if (node.phase !== "connected") {
        for (const [volumeId, grant] of writes) {
          if (node.phase !== "owner" || BigInt((grant as { epoch: number }).epoch) !== node.latestEpoch) {
            this.fail("correctness", "rule2.freezeOnLinkLoss", `${node.name} is ${node.phase} (peer not connected) at ${fmt(nowUs)} but accepts writes on volume ${volumeId} in epoch ${(grant as { epoch: number }).epoch} (newest epoch it knows: ${node.latestEpoch})`);
          }
        }
        // Rule 7: and only while its own heartbeat writes succeed.
        if (writes.length > 0) {
          const age = node.lastHeartbeatStartOkMs === undefined ? Infinity : node.localNowMs - node.lastHeartbeatStartOkMs;
          // Two ticks: the core times the write's start and checks the lease at tick granularity.
          if (age > this.bounds.selfFenceTimeoutMs + 2 * this.bounds.tickMs) {
            this.fail("correctness", "rule7.hungNodeStops", `${node.name} accepts writes without its peer at ${fmt(nowUs)} although its last successful heartbeat write started ${age.toFixed(0)} ms ago on its clock (selfFenceTimeout ${this.bounds.selfFenceTimeoutMs} ms)`);
          }
        }
      }
      this.checkFenced(node, nowUs, "rule4.leaseMargin");
    }
  }

  /** Every volume has exactly one writer (for the liveness checks). */
  writersComplete(nodes: [CheckedNode, CheckedNode], volumes: number[]): string | undefined {
    for (const volumeId of volumes) {
      const list = nodes.filter((node) => node.running && node.grants.get(volumeId)?.kind === "write");
      if (list.length !== 1) {
        const grants = nodes.map((node) => `${node.name}: ${node.running ? JSON.stringify(node.grants.get(volumeId)) : "not running"} (${node.phase ?? "down"})`).join("; ");
        return `volume ${volumeId} has ${list.length} writers (${grants})`;
      }
    }
    return undefined;
  }
}
