// The quorum cores' message to each other over the replication link, and its codec (pure). Each
// core sends one every heartbeat interval while the link is up: it proves the peer's quorum core is
// alive (a link whose bytes flow but whose peer core is stuck counts as down after linkTimeout),
// carries the newest decided record the sender knows (so a node that restarted without the witness
// still learns it lost), the epoch it has fenced itself for (fence evidence without the witness),
// and whether the sender's replicas are all in sync (both must say so before a SHARED record is
// proposed). `sequence` numbers the sender's messages and `echo` is the highest sequence it has
// received: a connection counts only once the peer echoes a message we sent on it, so messages
// that waited in a socket while a process was stopped cannot pass for the peer's current state.
// The replication link carries it as an opaque payload.
import { assert } from "../common/assert.ts";
import { type DecidedRecord, holdersMask, holdersOf, LeaseMode, type NodeIndex } from "./format.ts";

export interface QuorumMessage {
  from: NodeIndex;
  sequence: number;
  echo: number;
  fencedEpoch: bigint;
  decided: DecidedRecord;
  /** Every volume is in sync with the peer (the sender's replica layer says so). */
  synced: boolean;
  primaryCount: number;
}

export const quorumMessageVersion = 1;
export const quorumMessageBytes = 48;

export class QuorumMessageError extends Error {
  override name = "QuorumMessageError";
}

export function encodeQuorumMessage(message: QuorumMessage): Uint8Array {
  const bytes = new Uint8Array(quorumMessageBytes);
  const data = new DataView(bytes.buffer);
  const value = message.decided.value;
  data.setUint8(0, quorumMessageVersion);
  data.setUint8(1, message.from);
  data.setUint8(2, message.synced ? 1 : 0);
  assert(Number.isInteger(message.primaryCount) && message.primaryCount >= 0 && message.primaryCount <= 0xffffffff, "primary counts fit 32 bits");
  data.setUint32(4, message.primaryCount, true);
  data.setBigUint64(8, message.decided.version, true);
  data.setBigUint64(16, value.epoch, true);
  data.setUint8(24, value.mode);
  data.setUint8(25, value.mode === LeaseMode.Solo ? value.owner : 0);
  data.setUint8(26, holdersMask(value.holders));
  data.setUint8(27, value.forced ? 1 : 0);
  assert(Number.isInteger(message.sequence) && message.sequence >= 0 && message.sequence <= 0xffffffff && Number.isInteger(message.echo) && message.echo >= 0 && message.echo <= 0xffffffff, "message sequences fit 32 bits");
  data.setUint32(28, message.sequence, true);
  data.setUint32(32, message.echo, true);
  data.setBigUint64(40, message.fencedEpoch, true);
  return bytes;
}

/** Throws QuorumMessageError on anything this version does not send. */
export function decodeQuorumMessage(bytes: Uint8Array): QuorumMessage {
  if (bytes.length !== quorumMessageBytes) throw new QuorumMessageError(`a quorum message is ${quorumMessageBytes} bytes, not ${bytes.length}`);
  const data = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (data.getUint8(0) !== quorumMessageVersion) throw new QuorumMessageError(`quorum message version ${data.getUint8(0)} is not ${quorumMessageVersion}`);
  const from = data.getUint8(1);
  const synced = data.getUint8(2);
  const mode = data.getUint8(24);
  const owner = data.getUint8(25);
  const mask = data.getUint8(26);
  const forced = data.getUint8(27);
  if (from > 1 || synced > 1 || (mode !== LeaseMode.Shared && mode !== LeaseMode.Solo) || owner > 1 || mask > 3 || forced > 1 || data.getUint8(3) !== 0 || data.getUint32(36, true) !== 0) throw new QuorumMessageError("malformed quorum message");
  return {
    from: from as NodeIndex,
    sequence: data.getUint32(28, true),
    echo: data.getUint32(32, true),
    fencedEpoch: data.getBigUint64(40, true),
    synced: synced === 1,
    primaryCount: data.getUint32(4, true),
    decided: {
      version: data.getBigUint64(8, true),
      value: {
        epoch: data.getBigUint64(16, true),
        mode: mode as LeaseMode,
        owner: owner as NodeIndex,
        holders: holdersOf(mask),
        forced: forced === 1,
      },
    },
  };
}
