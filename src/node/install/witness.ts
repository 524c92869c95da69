// The install's witness step calls one seam: look at what the witness path holds for this cluster,
// and format it. The witness layout and its format belong to the quorum (src/quorum/); until that is
// part of this build there is no formatter, and the step only checks the path and stops the install
// there (it never pretends to have formatted anything).
import type { NodeConfig } from "../config.ts";

/** What a witness path holds, as far as this cluster is concerned. */
export type WitnessContent =
  | { kind: "blank" }
  | { kind: "ours"; detail: string }
  | { kind: "other-cluster"; detail: string }
  | { kind: "data"; detail: string };

/** Both take the paired node's config: the witness path, the cluster id, and the witness's settings. */
export interface WitnessFormatter {
  inspect(config: NodeConfig): Promise<WitnessContent>;
  format(config: NodeConfig, progress: (text: string) => void): Promise<{ detail: string }>;
}

/** This build's formatter: none until the quorum's `tandem witness format` is part of it. */
export const witnessFormatter: WitnessFormatter | undefined = undefined;
