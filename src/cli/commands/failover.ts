// `tandem failover VOLUME --to NODE [--wait] [--force]`: move a volume's primary role (a planned
// switchover with no data loss), or force this node to take over when the only data holder is gone.
// The daemon does the work (src/node/failover.ts); this command parses, states what a forced
// promotion discards before it asks for one, shows a spinner while the request runs, and renders.
import { Command, Option } from "clipanion";
import { failoverWaitMsMax } from "../../constants.ts";
import type { StatusReport } from "../../node/control/status.ts";
import type { FailoverResult } from "../../node/failover.ts";
import { TandemCommand } from "../base.ts";
import { withSpinner } from "../progress.ts";

/** What a forced promotion on this node discards, in words, from its status report. */
export function forceDiscards(status: StatusReport, volume: string): string {
  const quorum = status.quorum;
  const peer = status.node.peer?.name ?? "the peer";
  if (quorum.state === "not-configured") return `nothing the quorum knows of: this node has no witness`;
  const holders = quorum.dataHolders.filter((node) => node !== status.node.name);
  const view = status.volumes.find((candidate) => candidate.name === volume);
  const dirty = Number(view?.nodes[0]?.detail?.dirtyBytes ?? 0);
  if (quorum.dataHolders.includes(status.node.name) || holders.length === 0) return `nothing: ${status.node.name} holds the latest data (epoch ${quorum.epoch})`;
  return `every write ${holders.join(" and ")} made since epoch ${quorum.epoch} — an unknown number of regions while ${peer} is unreachable; they are overwritten by this node's data when ${peer} returns. This node's own unmirrored data: ${dirty} bytes`;
}

export class FailoverCommand extends TandemCommand {
  static override paths = [["failover"]];
  static override usage = Command.Usage({
    description: "Move a volume's primary role to a node",
    details: `
      A planned switchover: with both nodes connected and the quorum shared, the old primary stops
      new IO, lets the IO in flight finish, flushes, and gives the role to the node named by --to;
      nothing acknowledged is lost and IO pauses for well under a second. It is refused while a
      client still has the volume open on the old primary (the message names the client); with
      --wait it waits until the client disconnects instead (up to ten minutes).

      --force, on the node named by --to, takes over although this node does not hold the latest
      data and the node that does is gone: it first says what that discards, then wins a new epoch
      on the witness and promotes the volumes once the other node is provably fenced.

      A dead node's volumes move by themselves (the quorum promotes them once the node is fenced);
      no command is needed for that. Exit codes: 0 moved (or already there), 1 refused, 5 in use.
    `,
    examples: [
      ["Move demo to b", "tandem failover demo --to b"],
      ["Wait until the VM on the old primary is stopped", "tandem failover demo --to b --wait"],
      ["Take over on b although a held the latest data", "tandem failover demo --to b --force --socket /run/tandem/control.sock"],
    ],
  });

  volume = Option.String({ name: "volume" });
  to = Option.String("--to", { required: true, description: "The node that becomes the primary" });
  wait = Option.Boolean("--wait", false, { description: "Wait until the old primary's clients disconnect instead of refusing" });
  force = Option.Boolean("--force", false, { description: "Promote this node although it does not hold the latest data (says what it discards)" });

  async run(): Promise<number> {
    const client = this.client();
    let discards: string | undefined;
    if (this.force) {
      const status = await client.request<StatusReport>("GET", "/status");
      // Connected, the daemon refuses a forced promotion (a switchover is the way): nothing to state.
      if (status.node.link?.connected !== true) {
        discards = forceDiscards(status, this.volume);
        if (!this.json) this.context.stdout.write(`forced promotion of ${this.to} for ${this.volume} discards: ${discards}\n`);
      }
    }
    const title = this.force ? `forcing ${this.to} to take over ${this.volume}` : `moving ${this.volume} to ${this.to}`;
    const result = await withSpinner(this, title, (progress) => {
      if (this.wait) progress("waiting for the old primary's clients to disconnect");
      return client.request<FailoverResult>("POST", `/volumes/${encodeURIComponent(this.volume)}/failover`, { to: this.to, wait: this.wait, force: this.force }, { timeoutMs: this.wait ? failoverWaitMsMax : undefined });
    });
    this.output(discards === undefined ? result : { ...result, discards }, (r) => r.message);
    return 0;
  }
}
