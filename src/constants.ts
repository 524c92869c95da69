// Every limit Tandem enforces, in one place (CONVENTIONS.md §5). A bound that protects the daemon
// from a client, the network or the operator lives here with a name and a unit, and relations
// between bounds are asserted below when the module loads, so a bad edit fails at start-up rather
// than in the field. Sections are owned by the subsystem named in their heading.
import { assert } from "./common/assert.ts";

const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;
const TiB = 1024 * GiB;

// ---- Volumes and local storage (src/node) ----
/** Smallest volume we create: one maximum-size request, so every export limit makes sense. */
export const volumeSizeBytesMin = 1 * MiB;
/** Largest volume: offsets stay exact in a JS number (2^53) with a wide margin. */
export const volumeSizeBytesMax = 256 * TiB;
/** Volume sizes are whole multiples of this, so every export can use 4 KiB blocks. */
export const volumeSizeAlignmentBytes = 4 * KiB;
/** Volume names: DNS-label-like, so they are safe in paths, URLs and NBD export names. */
export const volumeNamePattern = /^[a-z0-9][a-z0-9_.-]{0,62}$/;
export const volumeCountMax = 1024;
/** O_DIRECT needs buffers and offsets aligned to the logical block size; 4 KiB covers every disk. */
export const directIoAlignmentBytes = 4 * KiB;
/** Bounce buffers for O_DIRECT requests whose guest buffer is not aligned are pooled up to this size. */
export const directIoBounceBytesMax = 32 * MiB;

// ---- Requests on any export (src/node/export) ----
/** Largest single READ/WRITE payload we accept (NBD and virtio); larger requests get EINVAL/EOVERFLOW. */
export const requestBytesMax = 32 * MiB;
/** Preferred request size we advertise: large enough for sequential throughput. */
export const requestBytesPreferred = 4 * KiB;
/** Smallest addressable unit we advertise (NBD minimum block size, virtio logical block). */
export const requestBytesMinimum = 512;
/** Largest TRIM / WRITE_ZEROES length in one request. */
export const discardBytesMax = 1 * GiB;
/** Requests in flight on one connection before we stop reading from its socket (back-pressure). */
export const requestsInFlightPerConnectionMax = 128;
/** Bytes of write payload buffered in flight on one connection before back-pressure. */
export const requestBytesInFlightPerConnectionMax = 128 * MiB;

// ---- NBD (src/node/export/nbd) ----
/** Client connections to one node's NBD listeners together. */
export const nbdConnectionsMax = 256;
/** Length of an option request during negotiation (export names, meta context queries). */
export const nbdOptionBytesMax = 64 * KiB;
/** NBD export names and meta context names, per the spec's 4096-byte limit on strings. */
export const nbdStringBytesMax = 4096;
/** Options a client may send before we close the negotiation (stops option floods). */
export const nbdOptionsPerNegotiationMax = 1024;
/** A client that has not finished the handshake in this time is disconnected. */
export const nbdHandshakeTimeoutMs = 30_000;
/** Extents returned in one BLOCK_STATUS reply. */
export const nbdBlockStatusExtentsMax = 4096;

// ---- Control API (src/node/control) ----
/** Largest request body the control API reads. */
export const controlRequestBytesMax = 1 * MiB;
/** Events kept in the node's event log; older ones are pruned. */
export const eventLogEntriesMax = 100_000;

// ---- Daemon lifecycle (src/node) ----
/** On SIGTERM, in-flight IO gets this long to drain before the daemon exits anyway. */
export const shutdownDrainTimeoutMs = 20_000;

// ---- Relations asserted at load ----
assert(volumeSizeBytesMin >= requestBytesMax / 32, "smallest volume must hold a useful request");
assert(volumeSizeBytesMax <= Number.MAX_SAFE_INTEGER / 1024, "volume offsets must stay exact in a double");
assert(volumeSizeAlignmentBytes % directIoAlignmentBytes === 0, "volume sizes must be O_DIRECT aligned");
assert(requestBytesMax % directIoAlignmentBytes === 0, "largest request must be O_DIRECT aligned");
assert(requestBytesMinimum <= requestBytesPreferred && requestBytesPreferred <= requestBytesMax, "block size constraints ordered");
assert(requestBytesInFlightPerConnectionMax >= requestBytesMax, "one maximal write must fit in flight");
assert(directIoBounceBytesMax >= requestBytesMax, "one maximal request must fit a bounce buffer");

export const units = { KiB, MiB, GiB, TiB } as const;
