// Which of the replication core's reports about the link become entries of the node's event log
// (`tandem events`), and how they read. The core already rate-limits refusals and rejected frames
// (src/replica/report-limiter.ts) and summarises what it held back, so one event per report keeps
// the event log bounded however many strangers knock.
import type { ReplicaReport } from "../../replica/types.ts";
import type { EventRecord } from "../state.ts";

export interface LinkEvent {
  level: EventRecord["level"];
  kind: string;
  message: string;
}

export function linkEventOf(report: ReplicaReport): LinkEvent | undefined {
  switch (report.kind) {
    case "linkUp":
      return report.framesTagged
        ? { level: "info", kind: "link-up", message: `link to ${report.peer} up (protocol ${report.version}, frames authenticated)` }
        : { level: "warn", kind: "link-up", message: `link to ${report.peer} up (protocol ${report.version}) with UNTAGGED frames: benchmark mode, anyone on the link can forge frames` };
    case "linkDown":
      return { level: "warn", kind: "link-down", message: `link down: ${report.reason}` };
    case "connectionRefused":
      return { level: "warn", kind: "link-refused", message: `${report.code} (${report.remote}): ${report.reason}` };
    case "frameRejected":
      return { level: "error", kind: "link-frame-rejected", message: `${report.code} (${report.remote}): ${report.reason}` };
    case "reportsSuppressed": {
      const codes = Object.entries(report.byCode)
        .map(([code, count]) => `${code} ×${count}`)
        .join(", ");
      return { level: "warn", kind: "link-refusals-suppressed", message: `${report.count} more refusals in ${report.windowMs / 1000} s not listed one by one: ${codes}` };
    }
    case "protocolError":
      return { level: "warn", kind: "link-protocol-error", message: report.reason };
    default:
      return undefined;
  }
}
