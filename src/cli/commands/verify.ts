// `tandem verify VOLUME [--repair]`: compare the two replicas by per-extent CRC32C over the link.
// On a terminal a spinner shows how far the comparison is (from the volume's status while the
// verify request runs).
import { Command, Option } from "clipanion";
import { cliProgressPollIntervalMs } from "../../constants.ts";
import type { VolumeView } from "../../node/volumes.ts";
import { TandemCommand } from "../base.ts";
import { spinnerEnabled, whilePolling, withSpinner } from "../progress.ts";

interface VerifyReply {
  volume: string;
  extentsCompared: number;
  mismatchCount: number;
  mismatches: { offset: number; length: number }[];
  repaired: number;
  complete: boolean;
  seconds: number;
}

/** "42% (1234 of 2900 extents), 0 differ" from the replication detail while a verify runs. */
export function verifyProgressText(volume: VolumeView): string | undefined {
  const verify = volume.nodes[0]?.detail?.verify as { extentsTotal?: number; extentsDone?: number; mismatches?: number } | undefined;
  if (!verify || !verify.extentsTotal) return undefined;
  const done = verify.extentsDone ?? 0;
  return `${Math.floor((done / verify.extentsTotal) * 100)}% (${done} of ${verify.extentsTotal} extents), ${verify.mismatches ?? 0} differ`;
}

export class VerifyCommand extends TandemCommand {
  static override paths = [["verify"]];
  static override usage = Command.Usage({
    description: "Compare a volume's two replicas, and optionally repair them",
    details: `
      Reads both replicas extent by extent, compares CRC32C checksums over the replication link and
      reports every differing extent. With --repair, each differing extent is copied from the
      up-to-date side (the primary). Runs on the volume's primary while IO continues; exits 1 when
      differences remain. On a terminal a spinner shows the progress.
    `,
    examples: [
      ["Check the demo volume", "tandem verify demo"],
      ["Check and repair", "tandem verify demo --repair --json"],
    ],
  });

  volume = Option.String({ name: "volume" });
  repair = Option.Boolean("--repair", false, { description: "Copy differing extents from the up-to-date side" });

  async run(): Promise<number> {
    const client = this.client();
    const name = encodeURIComponent(this.volume);
    const reply = await withSpinner(this, `verifying ${this.volume}`, (progress) => {
      const request = client.request<VerifyReply>("POST", `/volumes/${name}/verify`, { repair: this.repair });
      if (!spinnerEnabled(this)) return request;
      return whilePolling(request, cliProgressPollIntervalMs, async () => {
        const text = verifyProgressText(await client.request<VolumeView>("GET", `/volumes/${name}`, undefined, { timeoutMs: cliProgressPollIntervalMs * 4 }));
        if (text) progress(text);
      });
    });
    this.output(reply, (r) => {
      const lines = [`verified ${r.volume}: ${r.extentsCompared} extents compared in ${r.seconds.toFixed(1)} s, ${r.mismatchCount} differ`];
      for (const mismatch of r.mismatches.slice(0, 20)) lines.push(`  differs: offset ${mismatch.offset} length ${mismatch.length}`);
      if (r.mismatches.length > 20) lines.push(`  ... and ${r.mismatches.length - 20} more`);
      if (r.repaired > 0) lines.push(`repaired ${r.repaired} extents from the up-to-date side`);
      if (!r.complete) lines.push("verify did not complete (the link dropped?); run it again");
      return lines.join("\n");
    });
    return reply.complete && reply.mismatchCount === reply.repaired ? 0 : 1;
  }
}
