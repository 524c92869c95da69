// Shared by the `tandem lab` commands: the default directory and its option.
import { Option } from "clipanion";
import os from "node:os";
import path from "node:path";

export function defaultLabDir(): string {
  return process.env.TANDEM_LAB_DIR ?? path.join(os.tmpdir(), "tandem-lab");
}

/** The `--dir DIR` option every lab command takes. */
export function labDirOption(): string {
  return Option.String("--dir", defaultLabDir(), { description: "Directory of the lab (default: $TANDEM_LAB_DIR or $TMPDIR/tandem-lab)" });
}
