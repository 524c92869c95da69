// `tandem export remove VOLUME`: stop a volume's vhost-user export (NBD serves every volume).
import { Command, Option } from "clipanion";
import { TandemCommand } from "../../base.ts";

export class ExportRemoveCommand extends TandemCommand {
  static override paths = [["export", "remove"], ["export", "rm"]];
  static override usage = Command.Usage({
    category: "Exports",
    description: "Remove a volume's vhost-user export",
    details: "Drains the device's requests in flight, closes its socket and forgets the export, so it does not come back after a restart.",
    examples: [["Stop exporting vm1 to QEMU", "tandem export remove vm1"]],
  });

  volume = Option.String({ name: "volume" });

  async run(): Promise<void> {
    const reply = await this.client().request<{ removed: string }>("DELETE", `/exports/vhost/${encodeURIComponent(this.volume)}`);
    this.output(reply, (r) => `removed the vhost-user export of ${r.removed}`);
  }
}
