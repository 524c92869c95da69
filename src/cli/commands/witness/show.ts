// `tandem witness show [PATH]`: every record on the witness, both copies, marked valid, empty, torn
// or foreign. With PATH it reads the path itself; without, it asks the daemon for what it last read.
import { Command, Option, UsageError } from "clipanion";
import type { WitnessView } from "../../../quorum/describe.ts";
import { parseClusterId } from "../../../quorum/format.ts";
import { showWitness } from "../../../quorum/witness-io.ts";
import { table, TandemCommand } from "../../base.ts";

type ShowReply = WitnessView & { path: string; readAgeMs?: number | null };

export class WitnessShowCommand extends TandemCommand {
  static override paths = [["witness", "show"]];
  static override usage = Command.Usage({
    category: "Witness",
    description: "Show every record on the witness",
    details: `
      Decodes the witness: the superblock (cluster, timings), each node's slot (heartbeat, epoch,
      role, fenced epoch, the volumes it serves), the mailboxes, the Disk Paxos blocks and both
      nodes' copies of the decided record. Every record has two copies; each is shown valid, empty,
      torn (our record, interrupted or decayed: never trusted) or foreign (another cluster's, or not
      a witness record at all). With PATH the command reads it itself (O_DIRECT, with a deadline);
      without, the daemon answers with what it last read.

      With --json prints {"path", "cluster", "formatted", "superblock", "nodes": [{"index", "slot",
      "mailbox", "paxos", "decided"}], "decided", "problems"}; each record is {"record", "copies":
      [{"copy", "state", "sequence", "why"}]}. Exit codes: 1 the witness cannot be read, 3 no daemon
      (without PATH), 4 no such path or no witness configured.
    `,
    examples: [
      ["What the local daemon's witness holds", "tandem witness show"],
      ["Inspect a path directly", "tandem witness show /dev/disk/by-id/wwn-0x5000c500a1b2c3d4"],
    ],
  });

  target = Option.String({ name: "path", required: false });
  cluster = Option.String("--cluster", { description: "Decode as this cluster's witness (default: the cluster its superblock names)" });

  async run(): Promise<void> {
    let reply: ShowReply;
    if (this.target !== undefined) {
      let clusterId: Uint8Array | undefined;
      if (this.cluster !== undefined) {
        try {
          clusterId = parseClusterId(this.cluster);
        } catch (error) {
          throw new UsageError(`--cluster: ${(error as Error).message}`);
        }
      }
      reply = await showWitness(this.target, clusterId);
    } else {
      if (this.cluster !== undefined) throw new UsageError("--cluster goes with PATH; without PATH the daemon decodes its own witness");
      reply = await this.client().request<ShowReply>("GET", "/witness");
    }
    this.output(reply, renderWitness);
  }
}

const copyMark = (state: string) => ({ valid: "ok", empty: "-", torn: "TORN", foreign: "FOREIGN" })[state] ?? state;

export function renderWitness(view: ShowReply): string {
  const lines: string[] = [];
  const sb = view.superblock.record;
  lines.push(`witness ${view.path}${view.readAgeMs !== undefined && view.readAgeMs !== null ? ` (read ${view.readAgeMs} ms ago by the daemon)` : ""}`);
  if (!view.formatted || !sb) lines.push(view.cluster ? `  no valid superblock of cluster ${view.cluster}` : "  not a Tandem witness (no superblock): tandem witness format");
  else {
    const t = sb.timing;
    lines.push(`  cluster ${view.cluster}, formatted ${new Date(sb.formattedAtMs).toISOString()}, ${sb.areaBytes / 1024} KiB area of ${sb.recordBytes}-byte records`);
    lines.push(`  timing: heartbeat ${t.heartbeatIntervalMs} ms, link ${t.linkTimeoutMs} ms, head start ${t.headStartMs} ms, self-fence ${t.selfFenceTimeoutMs} ms, dead ${t.deadTimeoutMs} ms, watchdog ${t.watchdogTimeoutMs} ms, io ${t.ioTimeoutMs} ms, ρ ${(t.clockRateBoundPpm ?? 0) / 1e6}`);
  }
  lines.push(`  decided: ${view.decided ? `version ${view.decided.version}: ${view.decided.summary}` : "nothing yet (no data holder recorded)"}`);
  lines.push("");
  const rows = [["NODE", "ROLE", "HEARTBEAT", "EPOCH", "FENCED", "PRIMARIES", "MAILBOX", "PAXOS i/mbal/bal", "DECIDED", "COPIES s/m/p/d"]];
  for (const node of view.nodes) {
    const slot = node.slot.record;
    const box = node.mailbox.record;
    const paxos = node.paxos.record;
    const decided = node.decided.record;
    const copies = [node.slot, node.mailbox, node.paxos, node.decided].map((record) => record.copies.map((copy) => copyMark(copy.state)).join(",")).join(" ");
    rows.push([
      slot?.name ?? `node ${node.index}`,
      slot?.role ?? "-",
      slot?.heartbeat ?? "-",
      slot?.epoch ?? "-",
      slot && slot.fencedEpoch !== "0" ? slot.fencedEpoch : "-",
      slot ? `${slot.primaryCount}${slot.volumeIds.length ? ` (${slot.volumeIds.join(",")}${slot.truncated ? ",…" : ""})` : ""}` : "-",
      box && box.request !== "none" ? `${box.request} ${box.epoch} from ${box.from}` : "-",
      paxos ? `${paxos.instance}/${paxos.mbal}/${paxos.bal}` : "-",
      decided ? `v${decided.version}` : "-",
      copies,
    ]);
  }
  lines.push(table(rows));
  for (const problem of view.problems) lines.push(`! ${problem}`);
  return lines.join("\n");
}
