// Starts an NBD target for tests that use real clients (nbdinfo, qemu-io, fio ...). By default the
// real daemon (`tandem node run`, a child process) with one volume created through the CLI on a
// backing file in a temp directory, served on the node's NBD unix socket; tests that need to look
// inside the server use the in-process one (src/node/export/nbd over a FileLayer). Tests get
// { socketPath, exportName, backingPath, stop() } and an nbd+unix URI either way.
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { silentLogger, type Logger } from "../../src/common/log.ts";
import { FileLayer } from "../../src/node/block/file.ts";
import { startNbdServer, type NbdServer } from "../../src/node/export/nbd/server.ts";
import { TestDaemon } from "./daemon.ts";
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

export interface DaemonNbdTarget extends NbdTarget {
  daemon: TestDaemon;
}

/** The real daemon with one volume on a backing file the test can read behind its back. */
export async function startDaemonNbdTarget(options: NbdTargetOptions = {}): Promise<DaemonNbdTarget> {
  const daemon = await TestDaemon.start({ config: { log: { level: "info" } } });
  const exportName = options.exportName ?? "vol0";
  const backingPath = path.join(daemon.dir, `${exportName}.img`);
  try {
    if (options.initialContents) fs.copyFileSync(options.initialContents, backingPath);
    else FileLayer.createSparse(backingPath, options.sizeBytes ?? 64 * 1024 * 1024);
    const created = await daemon.cli(["volume", "create", exportName, "--backing", backingPath, ...(options.direct ? ["--direct"] : [])]);
    if (created.code !== 0) throw new Error(`volume create failed (${created.code}): ${created.stderr}`);
  } catch (error) {
    await daemon.cleanup();
    throw error;
  }
  let stopped = false;
  return {
    socketPath: daemon.nbdSocket,
    exportName,
    backingPath,
    uri: nbdUri(daemon.nbdSocket, exportName),
    daemon,
    async stop() {
      if (stopped) return;
      stopped = true;
      await daemon.cleanup();
    },
  };
}

/** The NBD target the interop tests run against: the real daemon. */
export async function startNbdTarget(options: NbdTargetOptions = {}): Promise<NbdTarget> {
  return startDaemonNbdTarget(options);
}
