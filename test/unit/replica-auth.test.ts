// Proves the link authentication's properties on the HMAC alone: the right secret verifies, a wrong
// secret, a replayed recording (different verifier nonce), a reflected mac (roles swapped), another
// cluster or a changed name all fail. The full handshake over a byte stream is exercised in
// replica-node.test.ts and by the simulator's intruder connections.
import { expect, test } from "bun:test";
import { authMac, verifyMac } from "../../src/replica/auth.ts";

const secret = new TextEncoder().encode("pairing secret of the box");
const cluster = new Uint8Array(16).fill(3);
const a = { nodeId: "a", nonce: new Uint8Array(32).fill(1) };
const b = { nodeId: "b", nonce: new Uint8Array(32).fill(2) };

test("a mac made with the pairing secret verifies", () => {
  const mac = authMac(secret, cluster, 1, a, b);
  expect(mac.length).toBe(32);
  expect(verifyMac(authMac(secret, cluster, 1, a, b), mac)).toBe(true);
});

test("a wrong secret, a replay, a reflection, another cluster, version or name all fail", () => {
  const expected = authMac(secret, cluster, 1, a, b);
  expect(verifyMac(expected, authMac(new TextEncoder().encode("another secret!!"), cluster, 1, a, b))).toBe(false);
  // Replay: the same prover answer recorded on a connection where the verifier sent another nonce.
  expect(verifyMac(authMac(secret, cluster, 1, a, { ...b, nonce: new Uint8Array(32).fill(9) }), expected)).toBe(false);
  // Reflection: b's own proof sent back to b as if a had made it.
  expect(verifyMac(expected, authMac(secret, cluster, 1, b, a))).toBe(false);
  expect(verifyMac(expected, authMac(secret, new Uint8Array(16).fill(4), 1, a, b))).toBe(false);
  expect(verifyMac(expected, authMac(secret, cluster, 2, a, b))).toBe(false);
  expect(verifyMac(expected, authMac(secret, cluster, 1, { ...a, nodeId: "c" }, b))).toBe(false);
  expect(verifyMac(expected, expected.subarray(0, 31))).toBe(false);
});
