// A stand-alone vhost-user-blk back-end for end-to-end tests and benchmarks, until the daemon can
// be started in a temp dir: one FileLayer over a backing file, behind a GateLayer as in the
// daemon's stacks, exported on a unix socket with startVhostExport. It runs as its own process so
// a test can kill it (SIGKILL: a crash) and start it again on the same socket and file, which is
// what a daemon restart looks like to QEMU.
//
//   bun test/helpers/vhost-backend.ts --file disk.img --socket vu.sock [--queues N] [--buffered]
//       [--log-level debug|info|warn|error] [--volume NAME] [--write-delay-ms N]
//
// --write-delay-ms holds every write for N ms before it reaches the file, so that a SIGKILL finds
// requests in flight that were never written: only their resubmission after the restart can keep
// the guest's data (the reconnect test relies on it).
//
// Prints one line `{"ready":true,"socket":...,"pid":...}` on stdout once it listens, then the
// export's JSON logs. SIGTERM or SIGINT: drain requests in flight, close, exit 0.
import { parseArgs } from "node:util";
import { createLogger, isLogLevel } from "../../src/common/log.ts";
import { FileLayer } from "../../src/node/block/file.ts";
import { GateLayer } from "../../src/node/block/gate.ts";
import { PassThroughLayer, type BlockLayer, type WriteFlags } from "../../src/node/block/layer.ts";
import type { ExportResolver } from "../../src/node/export/types.ts";
import { startVhostExport } from "../../src/node/export/vhost/server.ts";
import type { Payload } from "../../src/common/bytes.ts";

const { values } = parseArgs({
  options: {
    file: { type: "string" },
    socket: { type: "string" },
    queues: { type: "string", default: "1" },
    buffered: { type: "boolean", default: false },
    volume: { type: "string", default: "disk" },
    "log-level": { type: "string", default: "info" },
    "write-delay-ms": { type: "string", default: "0" },
  },
});

if (!values.file || !values.socket) {
  process.stderr.write("usage: vhost-backend.ts --file PATH --socket PATH [--queues N] [--buffered] [--log-level LEVEL]\n");
  process.exit(2);
}
const level = values["log-level"];
if (!isLogLevel(level)) {
  process.stderr.write(`unknown log level ${level}\n`);
  process.exit(2);
}

class DelayedWrites extends PassThroughLayer {
  readonly kind = "delay";
  constructor(below: BlockLayer, private readonly delayMs: number) {
    super(below);
  }
  override async write(offset: number, source: Payload, flags?: WriteFlags): Promise<void> {
    await Bun.sleep(this.delayMs);
    return this.below.write(offset, source, flags);
  }
}

const file = FileLayer.open({ path: values.file, direct: !values.buffered });
const writeDelayMs = Number(values["write-delay-ms"]);
const gate = new GateLayer(writeDelayMs > 0 ? new DelayedWrites(file, writeDelayMs) : file);
const volume = values.volume!;
let opened = 0;
const exports: ExportResolver = {
  open: (name, _client) => {
    if (name !== volume) return undefined;
    opened++;
    return { volume, layer: gate, readOnly: () => false, release: () => void opened--, onRevoke: () => {} };
  },
  list: () => [{ name: volume, description: values.file!, sizeBytes: gate.size() }],
};

const log = createLogger({ level });
const started = await startVhostExport({ socketPath: values.socket, volume, exports, queues: Number(values.queues), log });
process.stdout.write(JSON.stringify({ ready: true, socket: started.socketPath, pid: process.pid }) + "\n");

let stopping = false;
const stop = async (signal: string) => {
  if (stopping) return;
  stopping = true;
  log.info("stopping", { signal });
  await started.close({ drain: true });
  await gate.close();
  process.exit(0);
};
process.on("SIGTERM", () => void stop("SIGTERM"));
process.on("SIGINT", () => void stop("SIGINT"));
