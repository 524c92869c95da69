// Starts an NBD target for tests that use real clients (nbdinfo, qemu-io, fio ...): today the
// in-process server from src/node/export/nbd over a FileLayer on a temp sparse file, exposed as
// one export on a unix socket. Tests get { socketPath, exportName, backingPath, stop() } and an
// nbd+unix URI; `inProcess` gives the server and resolver to tests that need to look inside.
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { silentLogger, type Logger } from "../../src/common/log.ts";
import { FileLayer } from "../../src/node/block/file.ts";
import { startNbdServer, type NbdServer } from "../../src/node/export/nbd/server.ts";
import { TestExports } from "./nbd-exports.ts";

export interface NbdTarget {
  socketPath: string;
  exportName: string;
  backingPath: string;
  /** nbd+unix URI of the export, as libnbd and qemu take it. */
  uri: string;
  stop(): Promise<void>;
}

export interface InProcessNbdTarget extends NbdTarget {
  server: NbdServer;
  exports: TestExports;
  layer: FileLayer;
  directory: string;
}

export interface NbdTargetOptions {
  sizeBytes?: number;
  exportName?: string;
  /** O_DIRECT file layer instead of the page cache. */
  direct?: boolean;
  /** Start from this file's contents (copied) instead of an empty sparse file. */
  initialContents?: string;
  log?: Logger;
}

export function nbdUri(socketPath: string, exportName: string): string {
  return `nbd+unix:///${encodeURIComponent(exportName)}?socket=${socketPath}`;
}

export async function startInProcessNbdTarget(options: NbdTargetOptions = {}): Promise<InProcessNbdTarget> {
  const directory = fs.mkdtempSync(path.join(os.tmpdir(), "tandem-nbd-"));
  const exportName = options.exportName ?? "vol0";
  const backingPath = path.join(directory, `${exportName}.img`);
  const socketPath = path.join(directory, "nbd.sock");
  if (options.initialContents) {
    fs.copyFileSync(options.initialContents, backingPath);
  } else {
    FileLayer.createSparse(backingPath, options.sizeBytes ?? 64 * 1024 * 1024);
  }
  const layer = FileLayer.open({ path: backingPath, direct: options.direct });
  const exports = new TestExports();
  exports.add(exportName, layer, { description: `test volume ${exportName}` });
  const server = await startNbdServer({ unixPath: socketPath, exports, log: options.log ?? silentLogger });
  let stopped = false;
  return {
    socketPath,
    exportName,
    backingPath,
    uri: nbdUri(socketPath, exportName),
    server,
    exports,
    layer,
    directory,
    async stop() {
      if (stopped) return;
      stopped = true;
      await server.close({ drain: false });
      await layer.close();
      fs.rmSync(directory, { recursive: true, force: true });
    },
  };
}

/** The NBD target the interop tests run against. */
export async function startNbdTarget(options: NbdTargetOptions = {}): Promise<NbdTarget> {
  return startInProcessNbdTarget(options);
}
