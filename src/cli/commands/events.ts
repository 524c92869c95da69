// `tandem events [--limit N]`: the node's event log, oldest first.
import { Command, Option } from "clipanion";
import * as t from "typanion";
import { TandemCommand } from "../base.ts";

interface EventsReply {
  events: { id: number; timeMs: number; level: string; kind: string; volume: string | null; message: string }[];
}

export class EventsCommand extends TandemCommand {
  static override paths = [["events"]];
  static override usage = Command.Usage({
    description: "Show the node's event log",
    details: "Volume, export, replication and node events, kept across restarts (the newest 100,000).",
    examples: [["The last 20 events", "tandem events --limit 20"]],
  });

  limit = Option.String("--limit", "50", { validator: t.cascade(t.isNumber(), [t.isInteger(), t.isInInclusiveRange(1, 10000)]) });

  async run(): Promise<void> {
    const reply = await this.client().request<EventsReply>("GET", `/events?limit=${this.limit}`);
    this.output(reply, (r) =>
      r.events.length === 0 ? "no events" : r.events.map((e) => `${new Date(e.timeMs).toISOString()} ${e.level.padEnd(5)} ${e.kind}${e.volume ? ` [${e.volume}]` : ""}: ${e.message}`).join("\n"),
    );
  }
}
