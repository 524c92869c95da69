// `tandem export vhost VOLUME [--path SOCKET] [--queues N]`
import { Command, Option } from "clipanion";
import * as t from "typanion";
import { TandemCommand } from "../../base.ts";

export class ExportVhostCommand extends TandemCommand {
  static override paths = [["export", "vhost"]];
  static override usage = Command.Usage({
    category: "Exports",
    description: "Export a volume as a vhost-user-blk device",
    details: `
      Listens on a unix socket for QEMU's vhost-user-blk front-end. The export is recorded and comes
      back after a daemon restart; QEMU with reconnect=1 on its chardev reconnects by itself. The
      default socket is <vhost.socketDir>/<volume>.sock; --path must lie inside vhost.socketDir
      unless the config sets vhost.allowAnyPath, and be at most 107 bytes long. The socket is
      created with mode 0600 (root only), or 0660 with vhost.socketGroup as its group.
    `,
    examples: [
      ["Export vm1 with 2 queues", "tandem export vhost vm1 --queues 2"],
      [
        "Then, in QEMU",
        "qemu-system-x86_64 -object memory-backend-memfd,id=mem,size=1G,share=on -numa node,memdev=mem -chardev socket,id=vm1,path=/var/lib/tandem/vhost/vm1.sock,reconnect=1 -device vhost-user-blk-pci,chardev=vm1,num-queues=2",
      ],
    ],
  });

  volume = Option.String({ name: "volume" });
  socketFile = Option.String("--path", { description: "Unix socket to listen on" });
  queues = Option.String("--queues", { validator: t.cascade(t.isNumber(), [t.isInteger(), t.isInInclusiveRange(1, 16)]), description: "Virtqueues (1-16, default 1)" });

  async run(): Promise<void> {
    const path = this.socketFile === undefined ? undefined : this.socketFile.startsWith("/") ? this.socketFile : `${process.cwd()}/${this.socketFile}`;
    const reply = await this.client().request<{ volume: string; path: string; queues: number }>("POST", "/exports/vhost", { volume: this.volume, path, queues: this.queues });
    this.output(reply, (r) => `volume ${r.volume} exported over vhost-user-blk on ${r.path} (${r.queues} queue${r.queues === 1 ? "" : "s"})`);
  }
}
