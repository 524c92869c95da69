// `tandem witness format PATH [--cluster ID] [--force]`: write a fresh witness area on a block device,
// a partition or a file. It works without a daemon; with one, it takes the cluster id and timings
// the daemon is configured with.
import { Command, Option, UsageError } from "clipanion";
import { TandemError } from "../../../common/errors.ts";
import { defaultQuorumTiming, type QuorumTiming } from "../../../quorum/config.ts";
import { parseClusterId } from "../../../quorum/format.ts";
import { formatWitness, type FormatResult } from "../../../quorum/witness-io.ts";
import { TandemCommand } from "../../base.ts";
import { withSpinner } from "../../progress.ts";

export class WitnessFormatCommand extends TandemCommand {
  static override paths = [["witness", "format"]];
  static override usage = Command.Usage({
    category: "Witness",
    description: "Format a witness disk, partition or file",
    details: `
      Writes a fresh witness area (128 KiB at the start of PATH) for the pair named by --cluster:
      both superblock copies, every other record empty. Without --cluster the cluster id and the
      lease timings come from the daemon reached through --socket (the pair's peer.clusterId and
      [witness] settings); with --cluster the default timings are used. Every IO is O_DIRECT and has
      a deadline: a hung path is an error, not a hung command.

      It refuses a path that holds anything but zeros: another cluster's witness, this cluster's
      own witness (reformatting forgets which node holds the latest data), or any other data (it
      looks at the first MiB and the last 64 KiB). --force formats it anyway.

      With --json prints {"path", "cluster", "sizeBytes", "blockDevice", "areaBytes", "previously", "timing"}.
      Exit codes: 2 bad usage, 4 no such path, 5 the path holds data (without --force), 1 IO error.
    `,
    examples: [
      ["Format the shared LUN for the cluster the local daemon belongs to", "tandem witness format /dev/disk/by-id/wwn-0x5000c500a1b2c3d4"],
      ["Format a file for a given cluster", "tandem witness format ./witness.img --cluster 00112233445566778899aabbccddeeff"],
    ],
  });

  target = Option.String({ name: "path" });
  cluster = Option.String("--cluster", { description: "The pair's cluster id (32 hex digits, peer.clusterId in the nodes' configs)" });
  force = Option.Boolean("--force", false, { description: "Format even though the path holds data or another witness" });

  async run(): Promise<void> {
    let clusterId: Uint8Array;
    let timing: QuorumTiming = defaultQuorumTiming;
    if (this.cluster !== undefined) {
      try {
        clusterId = parseClusterId(this.cluster);
      } catch (error) {
        throw new UsageError(`--cluster: ${(error as Error).message}`);
      }
    } else {
      let identity: { clusterId: string | null; timing: QuorumTiming };
      try {
        identity = await this.client().request("GET", "/witness/identity");
      } catch (error) {
        if (!(error instanceof TandemError)) throw error;
        throw new UsageError(`name the cluster with --cluster ID (the nodes' peer.clusterId): the daemon at ${this.socketPath} could not tell it (${error.message})`);
      }
      if (!identity.clusterId) throw new UsageError(`the daemon at ${this.socketPath} is not paired: name the cluster with --cluster ID`);
      clusterId = parseClusterId(identity.clusterId);
      timing = identity.timing;
    }
    const result = await withSpinner(this, `formatting ${this.target}`, (progress) => formatWitness(this.target, { clusterId, timing, force: this.force, nowMs: Date.now(), progress }));
    this.output(result, renderFormat);
  }
}

function renderFormat(result: FormatResult): string {
  const size = result.sizeBytes >= 1024 * 1024 ? `${(result.sizeBytes / 1024 / 1024).toFixed(0)} MiB` : `${(result.sizeBytes / 1024).toFixed(0)} KiB`;
  return [
    `formatted ${result.path} as the witness of cluster ${result.cluster}`,
    `  ${result.areaBytes / 1024} KiB witness area on a ${size} ${result.blockDevice ? "block device" : "file"}; it held ${result.previously}`,
    `  timing: heartbeat ${result.timing.heartbeatIntervalMs} ms, self-fence ${result.timing.selfFenceTimeoutMs} ms, dead ${result.timing.deadTimeoutMs} ms (both nodes must use these)`,
  ].join("\n");
}
