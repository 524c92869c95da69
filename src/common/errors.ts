// Expected failures with a stable machine-readable code (CONVENTIONS.md §4). The control API sends
// `{ error: { code, message } }`, the CLI prints the message and maps the code to an exit status,
// and the exports map BlockError codes to their protocol's error numbers.

/** Codes shared by the control API and the CLI. Stable: scripts match on them. */
export type ErrorCode =
  | "invalid_argument"
  | "not_found"
  | "already_exists"
  | "in_use"
  | "failed_precondition"
  | "io_error"
  | "no_space"
  | "unavailable"
  | "internal";

export class TandemError extends Error {
  override name = "TandemError";
  constructor(
    readonly code: ErrorCode,
    message: string,
    readonly details?: Record<string, unknown>,
  ) {
    super(message);
  }
}

/**
 * Block IO failure classes. Each export maps them to its own protocol's answer (NBD error numbers,
 * virtio-blk status). The names follow the errno an NBD client sees.
 */
export type BlockErrorCode =
  | "EIO" // the medium or the replica failed
  | "ENOSPC" // out of space on the backing store
  | "EINVAL" // malformed request: past the end, misaligned, too long
  | "EPERM" // write to a read-only volume or replica
  | "EOVERFLOW" // request longer than the export accepts
  | "ENOTSUP" // operation the layer cannot perform
  | "ESHUTDOWN"; // the node is shutting down or the volume is frozen

export class BlockError extends Error {
  override name = "BlockError";
  constructor(
    readonly code: BlockErrorCode,
    message: string,
  ) {
    super(message);
  }
}

/** Map a Node/Bun system error (err.code = "ENOSPC", ...) to a BlockError. */
export function blockErrorFromSystem(error: unknown, what: string): BlockError {
  if (error instanceof BlockError) return error;
  const code = (error as { code?: string })?.code;
  const message = `${what}: ${(error as Error)?.message ?? String(error)}`;
  switch (code) {
    case "ENOSPC":
    case "EDQUOT":
      return new BlockError("ENOSPC", message);
    case "EINVAL":
      return new BlockError("EINVAL", message);
    case "EROFS":
    case "EPERM":
    case "EACCES":
      return new BlockError("EPERM", message);
    case "EOPNOTSUPP":
    case "ENOTSUP":
    case "ENOSYS":
      return new BlockError("ENOTSUP", message);
    default:
      return new BlockError("EIO", message);
  }
}
