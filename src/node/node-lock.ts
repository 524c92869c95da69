// The data directory's owner: `node.lock` holds an exclusive flock(2) for as long as the daemon runs.
// The kernel drops the lock when the process dies (even by SIGKILL), so a stale file never blocks a
// restart and a recycled pid cannot pretend to hold the directory; a second daemon on the same
// directory finds the lock taken and is refused. The file's text (the owner's pid) only makes the
// refusal readable. The file is never removed: unlinking a flock file lets a process that opened the
// old inode and one that creates a new file both believe they hold the lock.
import fs from "node:fs";
import path from "node:path";
import { TandemError } from "../common/errors.ts";
import { tryLockExclusive } from "../common/libc.ts";

export interface DataDirLock {
  readonly path: string;
  /** Let go of the directory (closing the descriptor drops the lock). */
  release(): void;
}

export function lockDataDir(dataDir: string): DataDirLock {
  const lockPath = path.join(dataDir, "node.lock");
  let fd: number;
  try {
    fd = fs.openSync(lockPath, fs.constants.O_RDWR | fs.constants.O_CREAT, 0o600);
  } catch (error) {
    throw new TandemError("failed_precondition", `cannot open ${lockPath}: ${(error as Error).message}`);
  }
  try {
    if (!tryLockExclusive(fd)) {
      const owner = fs.readFileSync(lockPath, "utf8").trim();
      const who = /^\d+$/.test(owner) ? `process ${owner}` : "another process";
      throw new TandemError("already_exists", `data directory ${dataDir} is in use by ${who} (it holds ${lockPath})`);
    }
    fs.ftruncateSync(fd, 0);
    fs.writeSync(fd, `${process.pid}\n`, 0);
  } catch (error) {
    fs.closeSync(fd);
    throw error;
  }
  let released = false;
  return {
    path: lockPath,
    release() {
      if (released) return;
      released = true;
      fs.closeSync(fd);
    },
  };
}
