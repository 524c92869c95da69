// A vhost-user-blk export: a unix socket that QEMU (`-chardev socket,path=...` with
// `-device vhost-user-blk-pci`) connects to, serving one volume to one front-end at a time. The
// session does the protocol (session.ts); this module owns the listening socket and the rule that
// sessions on one export never overlap: a new connection is accepted only once the previous
// session has released everything, so requests the previous session still had running can never
// race the resubmitted ones. With `reconnect=N` on the chardev, QEMU comes back after a daemon
// restart or a session we ended, and the guest carries on.
// The socket's access is explicit, never the umask's: it is bound with mode 0600 (root only) and
// opened to one configured group (0660) only afterwards; its path must stay inside the configured
// socket directory unless the config allows any path, and must fit a unix socket address.
import fs from "node:fs";
import nodePath from "node:path";
import { closeFd, peerProcessId, unixAccept, unixConnect, unixListen } from "../../../common/ffi-socket.ts";
import { TandemError } from "../../../common/errors.ts";
import { isInside, realPathOfExisting } from "../../../common/paths.ts";
import type { Logger } from "../../../common/log.ts";
import { unixSocketPathBytesMax, vhostQueuesMax } from "../../../constants.ts";
import type { ExportResolver, ExportSessionInfo } from "../types.ts";
import { Poller, type Watch } from "./poller.ts";
import { VhostSession } from "./session.ts";

export interface VhostExportOptions {
  socketPath: string; // unix socket QEMU connects to (we listen; QEMU is the client)
  volume: string; // volume name, opened through `exports`
  exports: ExportResolver; // src/node/export/types.ts
  queues: number; // number of virtqueues offered (1..limit in src/constants.ts)
  log: Logger; // src/common/log.ts
  /** Group allowed to connect (socket mode 0660); undefined: root only (mode 0600). */
  socketGid?: number;
}

/** Where an export's socket goes: `requested` (relative to `socketDir`) or `<socketDir>/<volume>.sock`. */
export function vhostSocketPathFor(options: { volume: string; requested: string | undefined; socketDir: string; allowAnyPath: boolean }): string {
  const socketDir = nodePath.resolve(options.socketDir);
  const socketPath = nodePath.resolve(socketDir, options.requested ?? `${options.volume}.sock`);
  const bytes = Buffer.byteLength(socketPath);
  if (bytes > unixSocketPathBytesMax) {
    throw new TandemError("invalid_argument", `socket path ${socketPath} is ${bytes} bytes; a unix socket path holds at most ${unixSocketPathBytesMax} (choose a shorter --path or vhost.socketDir)`);
  }
  if (!options.allowAnyPath) {
    // Compare real paths, so a symbolic link inside the directory cannot lead out of it.
    if (!isInside(realPathOfExisting(socketDir), realPathOfExisting(nodePath.dirname(socketPath)))) {
      throw new TandemError("invalid_argument", `${socketPath} is outside the vhost socket directory ${socketDir}; name a path inside it, or set vhost.allowAnyPath in the config`);
    }
  }
  return socketPath;
}

/** Bind with the umask forced to 0177 (mode 0600), then open the socket to `gid` (0660) if asked. */
function listenWithMode(socketPath: string, gid: number | undefined): number {
  const previous = process.umask(0o177);
  let fd: number;
  try {
    fd = unixListen(socketPath, listenBacklog);
  } catch (error) {
    if ((error as { code?: string }).code === "ENAMETOOLONG") throw new TandemError("invalid_argument", (error as Error).message);
    throw error;
  } finally {
    process.umask(previous);
  }
  try {
    if (gid !== undefined) {
      fs.chownSync(socketPath, -1, gid);
      fs.chmodSync(socketPath, 0o660);
    }
  } catch (error) {
    closeFd(fd);
    fs.rmSync(socketPath, { force: true });
    throw new TandemError("failed_precondition", `cannot give group ${gid} access to ${socketPath}: ${(error as Error).message}`);
  }
  return fd;
}

export interface VhostExport {
  readonly socketPath: string;
  sessions(): ExportSessionInfo[];
  /** Stop: finish requests in flight (drain) or not, close the session and the listening socket. */
  close(options?: { drain?: boolean }): Promise<void>;
}

const listenBacklog = 4;

/**
 * Make `path` free for a new listening socket: a socket left behind by a process that died (nobody
 * accepts on it) is removed; one that somebody still serves, or anything that is not a socket, is
 * an error.
 */
function claimSocketPath(path: string): void {
  let stat: fs.Stats;
  try {
    stat = fs.lstatSync(path);
  } catch (error) {
    if ((error as { code?: string }).code === "ENOENT") return;
    throw error;
  }
  if (!stat.isSocket()) throw new TandemError("already_exists", `${path} exists and is not a socket`);
  try {
    const fd = unixConnect(path);
    closeFd(fd);
    throw new TandemError("in_use", `${path} is being served by another process`);
  } catch (error) {
    if (error instanceof TandemError) throw error;
    const code = (error as { code?: string }).code;
    // EAGAIN: a live listener with a full backlog.
    if (code === "EAGAIN") throw new TandemError("in_use", `${path} is being served by another process`);
    // ECONNREFUSED (or anything else): nobody listens; the socket file is stale.
  }
  fs.unlinkSync(path);
}

export async function startVhostExport(options: VhostExportOptions): Promise<VhostExport> {
  const { socketPath, volume, exports, queues } = options;
  if (!Number.isInteger(queues) || queues < 1 || queues > vhostQueuesMax) {
    throw new TandemError("invalid_argument", `queues must be 1..${vhostQueuesMax}, not ${queues}`);
  }
  const log = options.log.child("vhost", { volume, socket: socketPath });
  claimSocketPath(socketPath);
  const listenFd = listenWithMode(socketPath, options.socketGid);
  const listenStat = fs.statSync(socketPath);
  const poller = Poller.acquire();
  let session: VhostSession | undefined;
  let closing: Promise<void> | undefined;
  let listenWatch: Watch | undefined;

  const acceptAll = (): void => {
    while (!closing) {
      // A session still releasing (IO settling) keeps new connections waiting in the backlog.
      if (session?.ended) return;
      let fd: number | undefined;
      try {
        fd = unixAccept(listenFd);
      } catch (error) {
        log.warn("accept failed", { error });
        return;
      }
      if (fd === undefined) return;
      const pid = peerProcessId(fd);
      const client = pid === undefined ? "unknown process" : `pid ${pid}`;
      if (session) {
        log.warn("connection refused: the export already has a front-end", { client, current: session.info().client });
        closeFd(fd);
        continue;
      }
      let handle;
      try {
        handle = exports.open(volume, client);
      } catch (error) {
        log.warn("connection refused: volume cannot be opened", { client, error });
        closeFd(fd);
        continue;
      }
      if (!handle) {
        log.warn("connection refused: no such volume on this node", { client });
        closeFd(fd);
        continue;
      }
      try {
        session = new VhostSession({
          fd,
          client,
          volume,
          handle,
          queues,
          log,
          poller,
          onClosed: (closed) => {
            if (session === closed) session = undefined;
            if (!closing) acceptAll();
          },
        });
      } catch (error) {
        // Out of watch slots or descriptors: refuse this front-end, keep the export.
        log.warn("connection refused: session could not start", { client, error });
        handle.release();
        closeFd(fd);
      }
    }
  };

  listenWatch = poller.watch(listenFd, acceptAll);
  log.info("vhost-user-blk export listening", { queues });
  acceptAll();

  return {
    socketPath,
    sessions: () => (session ? [session.info()] : []),
    close: (closeOptions) => {
      closing ??= (async () => {
        await listenWatch?.cancel();
        closeFd(listenFd);
        // Remove the socket file only if it is still the one we created.
        try {
          const stat = fs.lstatSync(socketPath);
          if (stat.ino === listenStat.ino && stat.dev === listenStat.dev) fs.unlinkSync(socketPath);
        } catch {
          // Already gone.
        }
        if (session) await session.end("export closed", "info", closeOptions?.drain ?? true);
        await poller.release();
        log.info("vhost-user-blk export closed");
      })();
      return closing;
    },
  };
}
