// Mutual authentication of the replication link with the pairing secret set at install. Each side
// sends a Hello with a fresh random nonce; each then proves it knows the secret with
//   mac = HMAC-SHA256(secret, "tandem-link-v1" | version | verifier nonce | prover nonce |
//                               prover node id | verifier node id | cluster id)
// The verifier's own fresh nonce makes an old recording useless (no replay), and naming prover and
// verifier in order makes a mac useless in the other direction or on another connection (no
// reflection: a node also refuses a peer that claims its own name). HMAC is a pure function; the
// nonces come from the caller's injected Random, so this module has no IO and no ambient state.
import { createHmac, timingSafeEqual } from "node:crypto";
import { assert } from "../common/assert.ts";
import { clusterIdBytes, macBytes } from "./wire.ts";

const label = new TextEncoder().encode("tandem-link-v1");
const encoder = new TextEncoder();

export interface AuthParty {
  nodeId: string;
  nonce: Uint8Array;
}

function lengthPrefixed(bytes: Uint8Array): Uint8Array {
  const out = new Uint8Array(2 + bytes.length);
  out[0] = bytes.length & 0xff;
  out[1] = bytes.length >>> 8;
  out.set(bytes, 2);
  return out;
}

/** The mac `prover` sends to `verifier` on a link of `clusterId` speaking `version`. */
export function authMac(secret: Uint8Array, clusterId: Uint8Array, version: number, prover: AuthParty, verifier: AuthParty): Uint8Array {
  assert(clusterId.length === clusterIdBytes, "cluster ids are 16 bytes");
  const hmac = createHmac("sha256", secret);
  hmac.update(label);
  hmac.update(new Uint8Array([version & 0xff, version >>> 8]));
  hmac.update(lengthPrefixed(verifier.nonce));
  hmac.update(lengthPrefixed(prover.nonce));
  hmac.update(lengthPrefixed(encoder.encode(prover.nodeId)));
  hmac.update(lengthPrefixed(encoder.encode(verifier.nodeId)));
  hmac.update(clusterId);
  const mac = new Uint8Array(hmac.digest());
  assert(mac.length === macBytes, "HMAC-SHA256 is 32 bytes");
  return mac;
}

/** Constant-time check of the mac a peer sent. */
export function verifyMac(expected: Uint8Array, received: Uint8Array): boolean {
  return received.length === expected.length && timingSafeEqual(expected, received);
}
