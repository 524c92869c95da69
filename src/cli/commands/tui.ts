// `tandem tui`: the live dashboard (src/tui/). Ink and React load only for this command, so every
// other command starts without them. --json prints one snapshot of what the dashboard shows (the
// status report and the newest events) and exits, for a script or a terminal without a TTY.
import { Command, UsageError } from "clipanion";
import type { EventRecord } from "../../node/state.ts";
import { tuiEventsKept } from "../../constants.ts";
import { TandemCommand } from "../base.ts";

export class TuiCommand extends TandemCommand {
  static override paths = [["tui"]];
  static override usage = Command.Usage({
    description: "Live dashboard of the node: link, quorum, volumes, resyncs, IO rates, events",
    details: `
      Polls the daemon every second and draws the node, the replication link (up or down, round
      trip), the witness and quorum, each volume's role, sync state, whether it can write, a
      resync progress bar with rate and ETA, read and write rates, and the newest events. The
      failover screen (f) states what a failover of the selected volume would do, what freezes
      and what a forced promotion discards, and asks for confirmation. ? lists the keys; q quits.

      It never waits on the daemon: when the daemon is slow or gone the last data stays on screen,
      marked STALE with its age. Fits 80x24; NO_COLOR turns colours off. Needs a terminal; with
      --json it prints one snapshot instead.
    `,
    examples: [
      ["Watch this node", "tandem tui"],
      ["Watch a lab node", "tandem tui --socket /tmp/tandem-lab/b/control.sock"],
      ["One snapshot for a script", "tandem tui --json"],
    ],
  });

  async run(): Promise<void> {
    if (this.json) {
      const client = this.client();
      const [status, events] = await Promise.all([client.status(), client.request<{ events: EventRecord[] }>("GET", `/events?limit=${tuiEventsKept}`)]);
      this.output({ status, events: events.events }, () => "");
      return;
    }
    const stdout = this.context.stdout as NodeJS.WriteStream;
    if (!stdout.isTTY || !process.stdin.isTTY) throw new UsageError("tandem tui needs a terminal (use --json for a snapshot, or tandem status)");
    const { runDashboard } = await import("../../tui/run.tsx");
    const noColor = process.env.NO_COLOR !== undefined && process.env.NO_COLOR !== "";
    await runDashboard({ socket: this.socketPath, color: !noColor });
  }
}
