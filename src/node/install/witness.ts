// The install's witness step calls one seam: look at what the witness path holds for this pair,
// and format it. The layout, the format and the reading are the quorum's (src/quorum/witness-io.ts,
// the same code as `tandem witness format` and `tandem witness show`); this file only says what the
// install needs to know of them: blank, this pair's (with the timings the daemon runs with, or
// others), another pair's, or other data.
import { TandemError } from "../../common/errors.ts";
import { type QuorumTiming, timingDifference, timingFromWitness } from "../../quorum/config.ts";
import { clusterIdHex, type WitnessTiming } from "../../quorum/format.ts";
import { formatWitness, showWitness } from "../../quorum/witness-io.ts";
import type { NodeConfig } from "../config.ts";

/** What a witness path holds, as far as this pair is concerned. */
export type WitnessContent =
  | { kind: "blank" }
  | { kind: "ours"; detail: string }
  /** This pair's witness, formatted with timings other than the ones this node's config names (the daemon would not use it). */
  | { kind: "other-timings"; detail: string }
  | { kind: "other-cluster"; detail: string }
  | { kind: "data"; detail: string };

/** Both take the paired node's config: the witness path, the cluster id, and the witness's settings. */
export interface WitnessFormatter {
  inspect(config: NodeConfig): Promise<WitnessContent>;
  format(config: NodeConfig, progress: (text: string) => void): Promise<{ detail: string }>;
}

/** The path holds data that formatting would destroy; the install never overwrites it by itself. */
export class WitnessHoldsData extends Error {
  override name = "WitnessHoldsData";
}

function target(config: NodeConfig): { path: string; clusterId: Uint8Array; timing: QuorumTiming } {
  if (!config.witness || !config.peer) throw new TandemError("failed_precondition", "the node is not paired with a witness named");
  return { path: config.witness.path, clusterId: config.peer.clusterId, timing: config.witness.timing };
}

export const witnessFormatter: WitnessFormatter = {
  async inspect(config) {
    const { path, clusterId, timing } = target(config);
    // The cluster comes from the superblock: this pair's, another's, or none (zeros, or data).
    const view = await showWitness(path);
    if (view.cluster === null) return view.problems.length === 0 ? { kind: "blank" } : { kind: "data", detail: `data that is not a Tandem witness (${view.problems[0]})` };
    if (view.cluster !== clusterIdHex(clusterId)) return { kind: "other-cluster", detail: `the witness of another cluster (${view.cluster})` };
    const formatted = view.superblock.record;
    const difference = formatted ? timingDifference(timing, timingFromWitness(formatted.timing as unknown as WitnessTiming)) : undefined;
    if (difference) return { kind: "other-timings", detail: `this pair's witness, formatted with other timings than this node's [witness] settings (${difference})` };
    return { kind: "ours", detail: view.decided ? `decided version ${view.decided.version}: ${view.decided.summary}` : "formatted, no lease decided yet" };
  },

  async format(config, progress) {
    const { path, clusterId, timing } = target(config);
    try {
      const result = await formatWitness(path, { clusterId, timing, force: false, nowMs: Date.now(), progress });
      return { detail: `a ${result.areaBytes / 1024} KiB witness area; it held ${result.previously}` };
    } catch (error) {
      // Not blank after all (something past the witness area: a partition table's copy, a file system).
      if (error instanceof TandemError && error.code === "already_exists") throw new WitnessHoldsData(error.message);
      throw error;
    }
  },
};
