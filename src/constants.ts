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
/** Volume ids travel as 32-bit fields on the replication link and in replica metadata; 0 names no volume. */
export const volumeIdMax = 0xffff_ffff;
/** O_DIRECT needs buffers and offsets aligned to the logical block size; 4 KiB covers every disk. */
export const directIoAlignmentBytes = 4 * KiB;
/** Bounce buffers for O_DIRECT requests whose guest buffer is not aligned are pooled up to this size. */
export const directIoBounceBytesMax = 32 * MiB;
/**
 * A page-cache write larger than this goes to the kernel as several pwrites, none crossing a
 * multiple of this size. The kernel sizes the page-cache folios a write creates by the write's
 * length (up to 2 MiB), and ext4 walks every block of a folio on each later write into it: after a
 * 1 MiB write, each 4 KiB write into that MiB cost 10.7 µs of kernel time here, against 1.5 µs
 * after 4 KiB writes and 2–3 µs after 16–64 KiB ones (docs/benchmarks.md, "Page-cache folios").
 * Writing 1 MiB as 32 KiB pieces costs about 26 µs more CPU per MiB (227 against 200 µs fresh, 141
 * against 115 overwriting).
 */
export const pageCacheWritePieceBytes = 32 * KiB;

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
/**
 * Most memory one NBD connection may hold for payloads and replies (its share of the node's budget
 * never exceeds this): enough for deep queues of ordinary requests; one maximal write is admitted
 * even above a smaller share, when the connection holds nothing else.
 */
export const requestBytesInFlightPerConnectionMax = 32 * MiB;

// ---- NBD (src/node/export/nbd) ----
/** Client connections to one node's NBD listeners together. */
export const nbdConnectionsMax = 256;
/** Length of an option request during negotiation (export names, meta context queries). */
export const nbdOptionBytesMax = 64 * KiB;
/** NBD export names and meta context names, per the spec's 4096-byte limit on strings. */
export const nbdStringBytesMax = 4096;
/** Options a client may send before we close the negotiation (stops option floods). */
export const nbdOptionsPerNegotiationMax = 1024;
/** A client that has not finished the handshake in this time is disconnected (real clients take milliseconds). */
export const nbdHandshakeTimeoutMs = 10_000;
/**
 * Memory all NBD connections of a node may hold together for request payloads and replies
 * (config `nbd.memoryBudget`). When it is spent, connections stop being read until memory is
 * given back; each connection gets at most an equal share of it while others want memory too.
 */
export const nbdMemoryBudgetBytesDefault = 256 * MiB;
/** The smallest budget the config accepts: one maximal write plus a read stream's working set, twice over. */
export const nbdMemoryBudgetBytesMin = 2 * (requestBytesMax + 4 * MiB);
/** READs longer than this are read and sent in pieces of this size, so a reply waiting on a slow client holds little memory. */
export const nbdReadPieceBytes = 1 * MiB;
/** Pieces of one streamed READ read ahead or waiting to be written to the socket. */
export const nbdReadPiecesAheadMax = 2;
/**
 * Share of the IO thread pool (UV_THREADPOOL_SIZE, which the service unit sets to 32; 4 when
 * unset) that NBD storage operations may occupy at once on the whole node: the rest stays free
 * for the replication link's and the metadata's IO and fdatasync.
 */
export const nbdStorageThreadPoolShare = 0.75;
/** The IO thread pool's size when UV_THREADPOOL_SIZE does not say. */
export const ioThreadPoolSizeDefault = 4;
/**
 * The environment the daemon runs with: packaging/tandem.service sets each (a test keeps them equal),
 * and so do the lab and the benchmarks when they start a daemon. Both are read before any of our
 * code runs, so the daemon cannot set them itself.
 *  - UV_THREADPOOL_SIZE: enough pool threads for O_DIRECT IO at iodepth 32 where io_uring is refused.
 *  - MIMALLOC_PURGE_DELAY: the runtime's allocator keeps freed memory for 1 s instead of 10 ms before
 *    it hands it back to the kernel, so the buffers every request allocates and drops reuse pages
 *    instead of faulting fresh ones in (madvise and page faults were 2-3 µs per mirrored write). Paired
 *    A/B, 6 rounds: mirrored 4k writes QD32 +4 to +28% IOPS in 5, QD1 mean lower in 5, node b 1-4 µs
 *    less CPU per write; resident memory +13-17 MB per daemon under load.
 */
export const daemonEnvironment = { UV_THREADPOOL_SIZE: "32", MIMALLOC_PURGE_DELAY: "1000" } as const;
/** Storage work the NBD server starts in one turn of the event loop before it lets other sockets and timers run. */
export const nbdStorageOperationsPerTurnMax = 32;
export const nbdStorageBytesPerTurnMax = 8 * MiB;
/**
 * A connection that holds budget memory while it has not read its replies (or sent the rest of an
 * announced WRITE payload) for this long is closed when other connections wait for memory: the
 * spec lets a server hard-disconnect a client whose behaviour is a denial of service. A client
 * that is merely slow while nobody waits is left alone; IO that waits on the volume (a frozen
 * gate) is never counted as a stall.
 */
export const nbdClientStallTimeoutMs = 30_000;
/** How often the stall check runs while connections wait for memory. */
export const nbdStallCheckIntervalMs = 1_000;
/** Refused NBD connections are logged at most once per this interval (with a count of those not logged). */
export const nbdRefusalLogIntervalMs = 5_000;
/**
 * The budget bounds the memory NBD traffic makes the daemon hold, including what is waiting for
 * the collector: every byte a client sends lands in a buffer the runtime allocates and drops once
 * it is copied out, and payloads and replies are dropped likewise, but the collector frees them
 * lazily (measured: a client writing 32 MiB payloads kept ~170 MiB of RSS for 32 MiB in use).
 * So connections are granted this fraction of the budget, and once this other fraction has been
 * dropped the driver asks for a collection (at most once per interval).
 */
export const nbdMemoryBudgetGrantableFraction = 0.75;
export const nbdGarbageBudgetFraction = 0.125;
export const nbdGarbageCollectionIntervalMsMin = 50;
/** Extents returned in one BLOCK_STATUS reply. */
export const nbdBlockStatusExtentsMax = 4096;
/** After a graceful close (DISC, ABORT, drain) the last replies get this long to leave before the socket is cut. */
export const nbdCloseLingerMs = 5_000;
/** The same when the daemon is stopping and every reply has been written. */
export const nbdShutdownLingerMs = 250;
/** While a connection's input is paused (back-pressure), it is resumed for a moment this often so a client that hung up is noticed. */
export const nbdPausedProbeIntervalMs = 1_000;

/** While the replication link is up, each node asks its peer what it holds this often and finishes
 * pending mirrored creates and deletes (pairing.ts); also done at once whenever the link comes up. */
export const pairingReconcileIntervalMs = 2_000;

// ---- Control API (src/node/control) ----
/** Largest request body the control API reads. */
export const controlRequestBytesMax = 1 * MiB;
/** Events kept in the node's event log; older ones are pruned. */
export const eventLogEntriesMax = 100_000;

/** Longest unix socket path: sockaddr_un.sun_path is 108 bytes with its terminating NUL. */
export const unixSocketPathBytesMax = 107;

// ---- Daemon lifecycle (src/node) ----
/** On SIGTERM, in-flight IO gets this long to drain before the daemon exits anyway. */
export const shutdownDrainTimeoutMs = 20_000;

// ---- Checksums and the direct IO engine (src/common/crc32c*, src/node/block/io-engine*) ----
/** Buffers from this length up are checksummed by the native CRC32C; shorter ones by the TypeScript
 * table loop, which beats the cost of a call into the addon below it (measured: docs/benchmarks.md). */
export const crc32cNativeBytesMin = 1 * KiB;
/**
 * Frames up to this many bytes (header and payload) are tagged through libcrypto, larger ones through
 * node:crypto (src/node/replica/gmac-native.ts). libcrypto (OpenSSL 3.0) costs less per frame, node's
 * BoringSSL less per byte: measured alone, 0.36-0.41 against 0.77-1.07 µs for a header, 1.28 against
 * 1.42-1.62 µs at 8 KiB, 1.68-1.76 against 1.43 µs at 12 KiB, 100 against 43 µs at 1 MiB.
 */
export const frameTagNativeBytesMax = 10 * KiB;
/** Submission entries of the process's io_uring (the kernel clamps to what it allows): requests of all
 * direct volumes in flight at once at most; more wait in order in the engine's queue. */
export const ioUringEntries = 256;
/**
 * Longest an io_uring waits on the CPU for a fast device's completion before sleeping in the event
 * loop (TANDEM_IO_POLL_US overrides; 0 turns it off). A device slower than this is never polled.
 */
export const ioUringPollMicrosDefault = 100;
/** The largest TANDEM_IO_POLL_US accepted: beyond a millisecond a spin costs more than any wake-up. */
export const ioUringPollMicrosLimit = 1000;
/** Polling is for a queue that would otherwise leave the event loop idle: at most this many requests in flight. */
export const ioUringPollInFlightMax = 1;

// ---- vhost-user-blk (src/node/export/vhost) ----
/** Virtqueues one vhost-user-blk export may offer (VHOST_USER_GET_QUEUE_NUM, virtio-blk num_queues). */
export const vhostQueuesMax = 16;
/** Largest split virtqueue we accept (QEMU's VIRTQUEUE_MAX_SIZE); sizes are powers of two. */
export const vhostQueueSizeMax = 1024;
/** Largest vhost-user message payload we read (SET_MEM_TABLE with 8 regions is 264 bytes). */
export const vhostMessagePayloadBytesMax = 4096;
/** File descriptors accepted with one vhost-user message (SET_MEM_TABLE carries one per region). */
export const vhostMessageFdsMax = 8;
/** Guest memory regions in one SET_MEM_TABLE (VHOST_MEMORY_BASELINE_NREGIONS). */
export const vhostMemoryRegionsMax = 8;
/** Device config space bytes in one GET_CONFIG / SET_CONFIG (VHOST_USER_MAX_CONFIG_SIZE). */
export const vhostConfigBytesMax = 256;
/** Data segments in one virtio-blk request, advertised as seg_max. */
export const vhostSegmentsPerRequestMax = 254;
/** Entries in one indirect descriptor table. */
export const vhostIndirectDescriptorsMax = 1024;
/** Ranges in one DISCARD / WRITE_ZEROES request (max_discard_seg, max_write_zeroes_seg). */
export const vhostDiscardSegmentsMax = 32;
/** GET_VRING_BASE (the front-end stopping a queue) waits this long for the queue's requests in flight;
 * requests still running after it are left in the in-flight region to be resubmitted on restart. */
export const vhostStopDrainTimeoutMs = 10_000;
/** Descriptors (listening sockets, sessions, kick eventfds) one process watches for vhost-user exports. */
export const vhostWatchedDescriptorsMax = 4096;

// ---- Replication (src/replica) ----
// Times are in milliseconds here; the replica cores count ticks (replicaTickMs each) and convert once,
// in src/replica/config.ts, so the simulator can run the same cores with shorter timings.
/** Period at which the driver ticks the replica cores: the resolution of every replication timeout. */
export const replicaTickMs = 10;
/** A Ping goes out when nothing else was sent for this long, so an idle link still proves it is alive. */
export const replicaKeepaliveIntervalMs = 500;
/** No byte from the peer for this long and the link is declared lost (DESIGN.md §5 linkTimeout). */
export const replicaLinkTimeoutMs = 1_500;
/** A connection that has not authenticated in this time is closed. The handshake is two round trips
 * on a direct cable (well under a millisecond); the bound leaves room for a loaded node and keeps a
 * stranger's idle connection short-lived. */
export const replicaHandshakeTimeoutMs = 2_000;
/** First and largest delay before redialling the peer after a lost or refused link (doubling, jittered). */
export const replicaReconnectDelayMsMin = 100;
export const replicaReconnectDelayMsMax = 5_000;
/** Accepted connections that have not yet shown a Hello signed with the pairing secret, from all
 * sources together. A new one beyond this evicts the oldest of the busiest source (never refused:
 * the real peer's next connection always gets in, see docs/security.md). */
export const replicaPendingConnectionsMax = 64;
/** The same, from one source address: a flood from one address only churns its own connections. */
export const replicaPendingConnectionsPerSourceMax = 8;
/** Handshakes past a correctly signed Hello (the peer, or a replay of its Hello) waiting for the
 * dialer's proof; a newer one evicts the oldest, so a replayed Hello cannot hold the peer out. */
export const replicaAdmittedConnectionsMax = 2;
/** Dialer nonces an acceptor remembers to refuse a replayed Hello outright. */
export const replicaRecentDialerNoncesMax = 1024;
/** Refused connections, failed handshakes and rejected frames reported (log and event) per window,
 * in all and per refusal code (so a flood of one kind cannot hide another, such as the real peer's
 * wrong secret); beyond it they are counted and one summary says what was held back. */
export const replicaRefusalReportsPerWindowMax = 20;
export const replicaRefusalReportsPerCodeMax = 5;
export const replicaRefusalReportWindowMs = 10_000;
/** Pairing secret length bounds. */
export const replicaSecretBytesMin = 16;
export const replicaSecretBytesMax = 1024;
/** Fresh challenge bytes each side sends in its Hello. */
export const replicaNonceBytes = 32;
/** Node names in the Hello (UTF-8 bytes). */
export const replicaNodeIdBytesMax = 64;
/** Largest chunk a resync or verify moves in one message. */
export const replicaResyncChunkBytesMax = 1 * MiB;
/** Largest frame on the replication link: one maximal write or read reply plus its fields. */
export const replicaFrameBytesMax = requestBytesMax + 64 * KiB;
/**
 * A received replication frame from this size on that spans several receive chunks keeps its data
 * in those chunks (Pieces) and is written to the page cache piece by piece, instead of being joined
 * into one buffer first: joining 1 MiB cost 160–210 µs of a daemon's CPU (docs/benchmarks.md).
 */
export const replicaFramePiecesBytesMin = 64 * KiB;
/** Dirty-bitmap runs in one BitmapRuns / ResyncProgress message. */
export const replicaBitmapRunsPerMessageMax = 4096;
/** Mirrored operations (writes, trims, zeroes) in flight per volume; more wait in the volume's queue. */
export const replicaWritesInFlightPerVolumeMax = 256;
/** Client operations queued behind conflicts, the activity log or a negotiation, per volume. */
export const replicaQueuedOperationsPerVolumeMax = 4096;
/** Bytes of one bitmap bit (a "granule"): chosen per volume inside these bounds at format time. */
export const replicaBitmapGranuleBytesMin = 4 * KiB;
export const replicaBitmapGranuleBytesMax = 64 * KiB;
/** Memory the dirty bitmap of a 1 TiB volume may use (DESIGN.md §3). */
export const replicaBitmapBytesPerTiBMax = 32 * MiB;
/** Size of one activity-log extent: a write into a cold extent first persists an AL transaction. */
export const replicaActivityLogExtentBytes = 4 * MiB;
/** Hot extents the activity log holds (bounds the resync after a primary crash: 256 x 4 MiB = 1 GiB). */
export const replicaActivityLogExtentsMax = 256;
/** Generation identifiers kept as history besides the current one and the bitmap base. */
export const replicaGenerationHistoryLength = 4;
/** Resync chunks in flight at once (the window), when no client IO competes. */
export const replicaResyncWindowChunks = 8;
/** Default resync rate ceiling; client IO also shrinks the window to one chunk while it is busy. */
export const replicaResyncRateBytesPerSecondDefault = 200 * MiB;
/** Chunks between resync checkpoints (target flush, bits cleared on both sides, progress persisted). */
export const replicaResyncCheckpointChunks = 64;
/** After a failed resync or verify chunk, wait this long before trying it again. */
export const replicaResyncRetryDelayMs = 1_000;
/** Extent compared by one CRC32C during online verify. */
export const replicaVerifyExtentBytes = 1 * MiB;
/** Differing extents a verify run lists in its report (it still counts the rest). */
export const replicaVerifyMismatchesReportedMax = 1024;
/** Granules written to the peer but not yet confirmed durable there before a barrier flush is forced. */
export const replicaTransferLogGranulesMax = 65_536;
/** A barrier flush to the peer goes out at least this often while unconfirmed writes exist. */
export const replicaBarrierIntervalMs = 1_000;
/** Dirty bitmap pages are written back at least this often. */
export const replicaBitmapWritebackIntervalMs = 5_000;
/** Window over which the resync rate (and so the ETA) is measured. */
export const replicaRateWindowMs = 10_000;

assert(replicaKeepaliveIntervalMs * 2 <= replicaLinkTimeoutMs, "two keepalives fit in the link timeout, so one lost Ping never cuts the link");
assert(replicaTickMs * 10 <= replicaKeepaliveIntervalMs, "ticks are fine enough to time keepalives");
assert(replicaReconnectDelayMsMin <= replicaReconnectDelayMsMax, "reconnect delays ordered");
assert(replicaSecretBytesMin >= 16 && replicaSecretBytesMin <= replicaSecretBytesMax, "pairing secrets carry at least 128 bits");
assert(replicaHandshakeTimeoutMs >= replicaTickMs * 10 && replicaHandshakeTimeoutMs <= replicaReconnectDelayMsMax, "a handshake gets at least ten ticks, and a stranger's connection lives no longer than one redial delay");
assert(replicaPendingConnectionsPerSourceMax >= 2 && replicaPendingConnectionsPerSourceMax <= replicaPendingConnectionsMax, "per-source pending bound within the total");
assert(replicaAdmittedConnectionsMax >= 1 && replicaRecentDialerNoncesMax >= replicaPendingConnectionsMax, "room for the peer's handshake; replay memory covers every pending handshake");
assert(replicaRefusalReportsPerCodeMax >= 1 && replicaRefusalReportsPerCodeMax <= replicaRefusalReportsPerWindowMax && replicaRefusalReportWindowMs >= replicaLinkTimeoutMs, "refusal reports: at least one per code and window, windows no shorter than a link timeout");
assert(replicaFrameBytesMax >= requestBytesMax + 4 * KiB && replicaFrameBytesMax >= replicaResyncChunkBytesMax + 4 * KiB, "one maximal request or chunk plus its fields fits a frame");
assert(replicaBitmapRunsPerMessageMax * 16 + 64 <= replicaFrameBytesMax, "a full BitmapRuns message fits a frame");
assert(replicaBitmapGranuleBytesMin >= volumeSizeAlignmentBytes && replicaBitmapGranuleBytesMin <= replicaBitmapGranuleBytesMax, "granules ordered and aligned");
assert(TiB / replicaBitmapGranuleBytesMin / 8 <= replicaBitmapBytesPerTiBMax, "the finest granule keeps a 1 TiB bitmap within its memory bound");
assert(volumeSizeBytesMax / replicaBitmapGranuleBytesMax <= 2 ** 32, "bit indexes of the largest volume fit 32 bits");
assert(replicaActivityLogExtentBytes % replicaBitmapGranuleBytesMax === 0, "activity-log extents hold whole granules");
assert(replicaActivityLogExtentsMax * 4 + 64 <= 4 * KiB, "one activity-log transaction fits one 4 KiB metadata slot");
assert(replicaResyncChunkBytesMax % replicaBitmapGranuleBytesMax === 0, "resync chunks hold whole granules");
assert(replicaVerifyExtentBytes <= replicaResyncChunkBytesMax, "a verify extent can be repaired with one chunk");
assert(replicaWritesInFlightPerVolumeMax >= requestsInFlightPerConnectionMax, "one connection's queue depth can be mirrored without queueing");
assert(replicaBarrierIntervalMs < replicaBitmapWritebackIntervalMs, "barriers keep the transfer log short between bitmap writebacks");

// ---- Operator surface: control client, status, TUI, copy-out (src/node/control, src/tui, src/cli) ----
/** A CLI request waits this long for the daemon (a verify of a large volume answers when it is done). */
export const controlRequestTimeoutMs = 120_000;
/** Status shows no link round trip while a describe over the link has waited this long (pairing.ts times them). */
export const linkRttStaleAfterMs = 1_000;
/** The TUI asks the daemon for a snapshot this often. */
export const tuiPollIntervalMs = 1_000;
/** One TUI request gives up after this long, so a hung daemon never blocks the screen. */
export const tuiRequestTimeoutMs = 800;
/** Longest the TUI waits for a failover it asked for (a switchover drains and flushes; a forced one runs a ballot). */
export const tuiFailoverTimeoutMs = 30_000;
/** The TUI marks its data stale once the last good snapshot is older than this. */
export const tuiStaleAfterMs = 3_000;
/** Events the TUI keeps (and asks for) for its events pane. */
export const tuiEventsKept = 50;
/** A CLI step with a spinner asks the daemon for its progress this often. */
export const cliProgressPollIntervalMs = 250;
/** `volume create --wait` gives up waiting for the initial sync after this long (the sync goes on). */
export const cliInitialSyncWaitMsMax = 24 * 3600 * 1000;
/** copy-out compares source and target checksums in chunks of this size. */
export const copyOutChecksumChunkBytes = 4 * MiB;
/** Bytes a copy-out's checksum reader may write beyond the volume's size (a larger target) before it is stopped. */
export const copyOutReaderExcessBytesMax = 64 * MiB;
/** During a copy-out, the first write to each chunk of this size preserves its old bytes (copy-before-write). */
export const copyOutPreserveChunkBytes = 64 * KiB;
/** Chunks one copy-out may preserve (256 GiB written during the copy); past it the copy fails, IO goes on. */
export const copyOutPreservedChunksMax = 4 * 1024 * 1024;
/** Taking a copy-out's point waits this long for requests in flight before giving up (and thawing). */
export const copyOutPointDrainTimeoutMs = 10_000;
/** A copy-out nobody reads from or asks about for this long is ended (a CLI that died mid-copy). */
export const copyOutIdleTimeoutMs = 10 * 60_000;
// Install preflight (src/node/install/preflight.ts)
/** Smallest witness the preflight accepts (the lab's witness file is 1 MiB). */
export const preflightWitnessBytesMin = 1 * MiB;
/** Replication link round trip above which the preflight warns (a direct cable is well under). */
export const preflightLinkRttMsWarn = 1;
/** ... and fails: every mirrored write waits one round trip. */
export const preflightLinkRttMsMax = 5;
/** TCP handshakes the preflight times to the peer, and how long each may take. */
export const preflightLinkRttProbes = 5;
export const preflightLinkRttTimeoutMs = 2_000;
/** An MTU under this on the replication interface is a warning. */
export const preflightLinkMtuBytesMin = 1500;
/** Clocks further apart than this fail the preflight (logs and events of both nodes must line up). */
export const preflightClockSkewMsMax = 10_000;
// Install: the pairing exchange and the steps (src/node/install/)
/** Characters of a pairing code: digits and capitals without 0 O 1 I L U, which people misread or mistype. */
export const pairingCodeAlphabet = "23456789ABCDEFGHJKMNPQRSTVWXYZ";
/** Characters in a pairing code: 30^8 (39 bits) against pairingAttemptsMax online guesses per code. */
export const pairingCodeLength = 8;
/** A code is accepted for this long after it is shown, then the listener stops. */
export const pairingCodeLifetimeMs = 15 * 60_000;
/** Exchanges a code may fail (each tests one guess of the code) before it is burnt. */
export const pairingAttemptsMax = 5;
/** Largest pairing message (a frame's JSON); the largest real one is under 1 KiB. */
export const pairingMessageBytesMax = 4 * KiB;
/** A whole exchange (five messages over one connection) must finish within this. */
export const pairingSessionTimeoutMs = 10_000;
/** Connections the pairing listener holds at once; a newer one evicts the oldest that has sent nothing yet. */
export const pairingSessionsMax = 4;
/** The replication port when an address names none. */
export const installReplicationPortDefault = 7788;
/** The node that types the code waits this long for the other node's installer to listen (both may start at once). */
export const installPeerWaitMs = 5 * 60_000;
/** The install waits this long for the daemon it started to answer on its control socket. */
export const installDaemonStartTimeoutMs = 30_000;
/** ... and this long for the replication link to come up with the new secret. */
export const installLinkUpTimeoutMs = 60_000;
/** The node that does not format the witness waits this long to see its peer's format. */
export const installWitnessWaitMs = 120_000;
/** ... reading the witness this often while it waits (each read is one 128 KiB O_DIRECT read). */
export const installWitnessPollMs = 500;
assert(preflightLinkRttMsWarn < preflightLinkRttMsMax, "the round-trip warning comes before the failure");
assert(pairingCodeAlphabet.length ** pairingCodeLength / pairingAttemptsMax > 1e11, "guessing a pairing code online stays hopeless");
assert(pairingSessionTimeoutMs < pairingCodeLifetimeMs, "an exchange fits in a code's life");
assert(installWitnessPollMs * 10 <= installWitnessWaitMs, "the witness wait reads the witness many times before it gives up");
assert(installLinkUpTimeoutMs >= 2 * (replicaReconnectDelayMsMax + 2 * replicaHandshakeTimeoutMs), "the install waits for the link through two redials");
assert(tuiRequestTimeoutMs < tuiPollIntervalMs, "a TUI request ends before the next poll starts, so polls never pile up");
assert(tuiStaleAfterMs > tuiPollIntervalMs + tuiRequestTimeoutMs, "one slow poll does not mark the data stale");
assert(linkRttStaleAfterMs < pairingReconcileIntervalMs, "a describe that outlives its interval already shows as no round trip");
assert(copyOutChecksumChunkBytes % volumeSizeAlignmentBytes === 0, "checksum chunks hold whole volume blocks");
assert(copyOutPreserveChunkBytes % volumeSizeAlignmentBytes === 0 && copyOutPreserveChunkBytes <= requestBytesMax, "preserved chunks are whole volume blocks, one request each");

// ---- Witness quorum (src/quorum) ----
// The witness disk's layout bounds and the lease's default timings (DESIGN.md §5). Times are in
// milliseconds; the quorum core counts ticks of quorumTickMs and converts once (src/quorum/config.ts).
/** One witness record: an aligned sector with its own CRC32C. 4 KiB covers 512-byte and 4Kn disks and O_DIRECT. */
export const witnessRecordBytes = 4 * KiB;
/** The area `tandem witness format` owns at the start of the path (the records use the first 18 sectors; the rest is reserved). */
export const witnessAreaBytes = 128 * KiB;
/** Bytes `tandem witness format` inspects at the start and at the end of a path for data it would destroy. */
export const witnessProbeBytes = 1 * MiB;
/** One IO of `tandem witness format|show` on a path may take this long before the command reports the witness hung. */
export const witnessCommandIoTimeoutMs = 10_000;
/** Volume ids a node lists in its slot; a node serving more lists this many and marks the list truncated. */
export const witnessSlotVolumeIdsMax = 960;
/** Longest node name a slot or a mailbox carries (UTF-8 bytes; node names are at most 31 characters). */
export const witnessNodeNameBytesMax = 32;
/** Period at which the driver ticks the quorum core: the resolution of every lease timeout. */
export const quorumTickMs = 10;
/** DESIGN.md §5 defaults: heartbeat 0.5 s, linkTimeout 1.5 s, headStart 1 s, selfFence 3 s, dead 5 s. */
export const quorumHeartbeatIntervalMsDefault = 500;
export const quorumLinkTimeoutMsDefault = replicaLinkTimeoutMs;
export const quorumHeadStartMsDefault = 1_000;
export const quorumSelfFenceTimeoutMsDefault = 3_000;
export const quorumDeadTimeoutMsDefault = 5_000;
/** The kernel watchdog fires this long after its last feed (whole seconds: WDIOC_SETTIMEOUT counts seconds). */
export const quorumWatchdogTimeoutMsDefault = 3_000;
/** Every witness read or write that has not completed in this time counts as failed (the witness is lost). */
export const quorumIoTimeoutMsDefault = 500;
/** ρ: the largest relative rate error of either node's monotonic clock the timing relations allow for. */
export const quorumClockRateBoundDefault = 0.01;
/** Largest ρ a config may claim: beyond it no sensible timeout satisfies the relations. */
export const quorumClockRateBoundMax = 0.1;
/** After a Disk Paxos ballot aborts (the other node's ballot is higher), wait up to this long (random) before the next. */
export const quorumBallotBackoffMsMax = 200;
/** Longest timeout a config may name: bounds tick counters and the operator's wait. */
export const quorumTimeoutMsMax = 600_000;

assert(witnessRecordBytes % directIoAlignmentBytes === 0 && witnessAreaBytes % directIoAlignmentBytes === 0, "witness records and area are O_DIRECT aligned");
assert(18 * witnessRecordBytes <= witnessAreaBytes && witnessAreaBytes <= witnessProbeBytes, "the witness records fit the area, and format inspects at least the area");
assert(116 + 4 * witnessSlotVolumeIdsMax <= witnessRecordBytes, "a slot's volume list fits one record");
assert(quorumTickMs * 10 <= quorumHeartbeatIntervalMsDefault, "ticks are fine enough to time heartbeats");
assert(quorumIoTimeoutMsDefault <= quorumHeartbeatIntervalMsDefault && quorumHeartbeatIntervalMsDefault < quorumSelfFenceTimeoutMsDefault, "default timings keep the lease relations (checked in full by src/quorum/config.ts)");
assert(quorumBallotBackoffMsMax < quorumHeadStartMsDefault, "a retried ballot still fits well inside the head start");

// ---- Relations asserted at load ----
assert(volumeSizeBytesMin >= requestBytesMax / 32, "smallest volume must hold a useful request");
assert(volumeSizeBytesMax <= Number.MAX_SAFE_INTEGER / 16, "volume offsets (and offset + length sums) must stay exact in a double");
assert(volumeSizeAlignmentBytes % directIoAlignmentBytes === 0, "volume sizes must be O_DIRECT aligned");
assert(requestBytesMax % directIoAlignmentBytes === 0, "largest request must be O_DIRECT aligned");
assert(requestBytesMinimum <= requestBytesPreferred && requestBytesPreferred <= requestBytesMax, "block size constraints ordered");
assert(requestBytesInFlightPerConnectionMax >= requestBytesMax, "one maximal write must fit in flight");
assert(directIoBounceBytesMax >= requestBytesMax, "one maximal request must fit a bounce buffer");
assert(vhostSegmentsPerRequestMax + 2 <= vhostIndirectDescriptorsMax, "a request with seg_max segments, its header and status fits one indirect table");
assert((vhostQueueSizeMax & (vhostQueueSizeMax - 1)) === 0 && vhostQueueSizeMax <= 32768, "virtqueue sizes are powers of two up to 32768");
assert(vhostMessagePayloadBytesMax >= 8 + 32 * vhostMemoryRegionsMax && vhostMessagePayloadBytesMax >= 12 + vhostConfigBytesMax, "every vhost-user message fits the payload bound");
assert(vhostMessageFdsMax >= vhostMemoryRegionsMax, "SET_MEM_TABLE passes one descriptor per region");
assert(vhostDiscardSegmentsMax * 16 <= requestBytesMax, "a DISCARD request's ranges fit one request");
assert(vhostQueuesMax >= 1 && vhostQueuesMax <= 256, "vring indexes in vhost-user messages are 8 bits");
assert(requestBytesMax + 8 <= 0xffffffff && discardBytesMax <= 0xffffffff, "NBD lengths (and a READ's OFFSET_DATA chunk) fit 32-bit fields");
assert((requestBytesMinimum & (requestBytesMinimum - 1)) === 0 && requestBytesMinimum <= 65536, "the NBD minimum block size is a power of two of at most 64 KiB");
assert(volumeSizeAlignmentBytes % requestBytesMinimum === 0, "every volume is a whole number of NBD minimum blocks");
assert(nbdOptionBytesMax >= 2 * nbdStringBytesMax + 16, "an NBD option can carry a maximal export name and query");
assert(nbdBlockStatusExtentsMax >= 1 && nbdPausedProbeIntervalMs > 0 && nbdCloseLingerMs > 0, "NBD limits are positive");
assert(nbdMemoryBudgetBytesMin <= nbdMemoryBudgetBytesDefault, "the default NBD memory budget is one the config would accept");
assert(requestBytesInFlightPerConnectionMax >= nbdReadPieceBytes * nbdReadPiecesAheadMax + 64 * KiB, "one connection's share holds a READ stream's working set");
assert(nbdMemoryBudgetBytesMin * nbdMemoryBudgetGrantableFraction >= requestBytesMax + nbdReadPieceBytes * nbdReadPiecesAheadMax, "the smallest budget grants one maximal write beside a READ stream");
assert(nbdMemoryBudgetGrantableFraction + nbdGarbageBudgetFraction < 1, "granted memory and garbage between collections leave room for received bytes");
assert(nbdReadPieceBytes % directIoAlignmentBytes === 0 && nbdReadPieceBytes <= requestBytesMax, "READ pieces are O_DIRECT aligned and no larger than a request");
assert(nbdReadPiecesAheadMax >= 1 && nbdStorageThreadPoolShare > 0 && nbdStorageThreadPoolShare < 1 && nbdStorageOperationsPerTurnMax >= 1, "NBD storage scheduling admits work and leaves threads free");
assert(nbdStorageBytesPerTurnMax >= nbdReadPieceBytes, "a turn of the event loop can start at least one READ piece");
assert(nbdStallCheckIntervalMs <= nbdClientStallTimeoutMs && nbdClientStallTimeoutMs > nbdPausedProbeIntervalMs, "stalls are checked well within their timeout, and a hang-up is noticed first");

export const units = { KiB, MiB, GiB, TiB } as const;

// ---- failover (src/node/failover.ts) ----
/** How often a switchover with --wait looks whether the old primary's clients are gone. */
export const failoverWaitPollMs = 100;
/** Longest a switchover waits for the old primary's IO in flight to drain after it froze the volume. */
export const failoverDrainTimeoutMs = 5_000;
/** Longest `tandem failover --wait` waits for clients to disconnect (the CLI's request timeout). */
export const failoverWaitMsMax = 600_000;
assert(failoverWaitPollMs * 10 <= failoverDrainTimeoutMs, "a drain outlasts several polls");

// ---- hooks (src/node/hooks.ts) ----
/** A hook command (hooks.promoted / hooks.fenced) is killed after this long. */
export const hookTimeoutMs = 30_000;
/** Bytes of a hook's output kept in the log and the event log. */
export const hookOutputBytesMax = 4096;
