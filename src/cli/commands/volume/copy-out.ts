// `tandem volume copy-out NAME TARGET`: copy a live volume, as of a point the command states, to
// anything QEMU's block layer writes, then compare checksums (src/node/copy-out-runner.ts).
import { Command, Option } from "clipanion";
import * as t from "typanion";
import { formatSize } from "../../../common/size.ts";
import { type CopyOutResult, runCopyOut } from "../../../node/copy-out-runner.ts";
import { TandemCommand } from "../../base.ts";
import { withSpinner } from "../../progress.ts";

export function renderCopyOut(result: CopyOutResult): string {
  const lines = [
    `copied ${result.volume} to ${result.target} (${result.targetFormat}): ${formatSize(result.sizeBytes)} in ${result.copySeconds.toFixed(1)} s`,
    `  consistent as of ${result.point}: every write completed before then is in the copy, none after (${formatSize(result.preservedBytes)} written during the copy were kept aside)`,
  ];
  if (result.checksum.match) lines.push(`  checksums match: sha256 ${result.checksum.source}`);
  else {
    lines.push(`  CHECKSUMS DIFFER: source sha256 ${result.checksum.source}, target ${result.checksum.target}`);
    lines.push(`  ${result.checksum.differingChunks} chunks of ${formatSize(result.checksum.chunkBytes)} differ, the first at offset ${result.checksum.firstDifferenceOffset}`);
  }
  return lines.join("\n");
}

export class VolumeCopyOutCommand extends TandemCommand {
  static override paths = [["volume", "copy-out"]];
  static override usage = Command.Usage({
    category: "Volumes",
    description: "Copy a live volume, consistent as of a stated point, to a file, NBD server, Ceph RBD image or DRBD device",
    details: `
      Takes a point of the volume (IO pauses for one flush; every write completed before the point
      is in the copy, none after), then copies that point with qemu-img convert while VMs keep
      writing: TARGET is anything QEMU's block layer writes: a file (created, or written into if it
      exists), an NBD server (nbd+unix:///NAME?socket=PATH, nbd://HOST/NAME), a Ceph RBD image
      (rbd:POOL/IMAGE), a block device (/dev/drbd1000 of a LINSTOR resource). Then it reads the point
      and the target back and compares SHA-256 checksums; exit 1 when they differ. Runs on the
      volume's primary, and needs qemu-utils and libnbd-bin. docs/scale-out.md moves a whole site.
    `,
    examples: [
      ["Into a file", "tandem volume copy-out vm1 /backup/vm1.raw"],
      ["As qcow2", "tandem volume copy-out vm1 /backup/vm1.qcow2 --target-format qcow2"],
      ["Into an existing Ceph RBD image", "tandem volume copy-out vm1 rbd:vms/vm1 --target-exists"],
      ["Onto a LINSTOR/DRBD device", "tandem volume copy-out vm1 /dev/drbd1000"],
    ],
  });

  name = Option.String({ name: "name" });
  target = Option.String({ name: "target" });
  targetFormat = Option.String("--target-format", "raw", { description: "qemu-img format of the target: raw (default), qcow2, ...", validator: t.cascade(t.isString(), [t.matchesRegExp(/^[a-z0-9_-]{1,16}$/)]) });
  targetExists = Option.Boolean("--target-exists", false, { description: "Write into an existing target (rbd, iSCSI) instead of creating it; files, devices and NBD URIs are detected" });

  async run(): Promise<number> {
    const result = await withSpinner(this, `copying ${this.name} to ${this.target}`, (progress) =>
      runCopyOut(this.client(), { volume: this.name, target: this.target, targetFormat: this.targetFormat, targetExists: this.targetExists }, (phase) => {
        if (phase.kind === "point") progress("taking a consistent point");
        else progress(`${phase.kind === "copy" ? "copying" : "comparing checksums"} ${Math.floor(phase.fraction * 100)}%`);
      }),
    );
    this.output(result, renderCopyOut);
    return result.checksum.match ? 0 : 1;
  }
}
