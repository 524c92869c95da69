// The quorum core's reports that belong in the node's event log (`tandem events`), as one sentence
// each: the decisions an operator must be able to reconstruct after the fact (who won which epoch,
// which volumes moved, when this node fenced itself, when the witness came and went). Phase changes
// and ballot retries go to the daemon's log only.
import type { QuorumReport } from "../quorum/lease.ts";
import type { EventRecord } from "./state.ts";

export interface QuorumEventRecord {
  level: EventRecord["level"];
  kind: string;
  message: string;
}

export function quorumEvent(report: QuorumReport, peerName: string): QuorumEventRecord | undefined {
  switch (report.kind) {
    case "won":
      return { level: "warn", kind: "quorum-won", message: `this node won epoch ${report.epoch}${report.forced ? " (forced by an operator)" : ""}: it writes alone; ${peerName} is outdated` };
    case "lost":
      return { level: "warn", kind: "quorum-lost", message: `epoch ${report.epoch} went to the other node: this node is frozen and outdated until it resyncs` };
    case "promoted":
      return { level: "warn", kind: "quorum-promoted", message: `promoted volumes ${report.volumes.join(", ")} in epoch ${report.epoch} (fence evidence: ${report.evidence})` };
    case "peerFenced":
      return { level: "info", kind: "quorum-peer-fenced", message: `${peerName} is fenced for epoch ${report.epoch} (${report.evidence})` };
    case "selfFenced":
      return { level: "error", kind: "quorum-self-fenced", message: "own heartbeat writes to the witness stalled while the link was down: all IO stopped" };
    case "witness":
      return { level: reportLevel(report.reachable), kind: report.reachable ? "witness-reachable" : "witness-lost", message: report.reachable ? "the witness answers again" : `the witness is lost: ${report.reason}` };
    case "waiting":
      return { level: "warn", kind: "quorum-waiting", message: report.reason };
    case "conflict":
      return { level: "error", kind: "quorum-conflict", message: `two values decided for version ${report.version} (${report.source}): agreement is broken` };
    default:
      return undefined;
  }
}

function reportLevel(good: boolean): EventRecord["level"] {
  return good ? "info" : "warn";
}
