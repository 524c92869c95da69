// Serves one file as an NBD export on a unix socket, in its own process, so the benchmark measures
// Tandem's NBD target the way it measures qemu-nbd: a separate server that fio talks to.
//   bun bench/nbd-serve.ts FILE SOCKET [--name NAME] [--direct]
// Prints "ready" on stdout once listening; exits on SIGTERM/SIGINT after closing the server.
import { createLogger } from "../src/common/log.ts";
import { FileLayer } from "../src/node/block/file.ts";
import { startNbdServer } from "../src/node/export/nbd/server.ts";
import type { ExportHandle, ExportResolver } from "../src/node/export/types.ts";

const args = process.argv.slice(2);
const positional = args.filter((argument, index) => !argument.startsWith("--") && args[index - 1] !== "--name");
const [file, socketPath] = positional;
if (!file || !socketPath) {
  console.error("usage: bun bench/nbd-serve.ts FILE SOCKET [--name NAME] [--direct]");
  process.exit(2);
}
const nameIndex = args.indexOf("--name");
const name = nameIndex >= 0 ? args[nameIndex + 1]! : "disk";
const layer = FileLayer.open({ path: file, direct: args.includes("--direct") });
const exports: ExportResolver = {
  open(requested: string): ExportHandle | undefined {
    if (requested !== name) return undefined;
    return { volume: name, layer, readOnly: () => false, release() {}, onRevoke() {} };
  },
  list: () => [{ name, description: "", sizeBytes: layer.size() }],
};
const server = await startNbdServer({ unixPath: socketPath, exports, log: createLogger({ level: "warn" }) });
console.log(`ready (direct IO engine: ${layer.direct ? layer.ioEngineName : "none"})`);
const stop = async () => {
  await server.close({ drain: false });
  await layer.close();
  process.exit(0);
};
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
