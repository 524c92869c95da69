// A stranger on the replication network, run as its own process by the starvation test so its
// connection flood does not share the test's event loop:
//   bun test/helpers/link-stranger.ts HOST PORT IDLE SECONDS
// For SECONDS it keeps IDLE connections open that never send a byte (reopening any the node
// closes), and floods: as many new connections at once as it can keep in flight (up to 64), each
// left open until the node closes it. Then it closes everything, prints one JSON line with what it
// did, and exits by itself.
import type { Socket } from "bun";

const [host, portText, idleText, secondsText] = process.argv.slice(2);
const port = Number(portText);
const idle = Number(idleText);
const endMs = Date.now() + Number(secondsText) * 1000;
const inFlightMax = 64;

const counts = { connects: 0, failedConnects: 0, closedByNode: 0 };
const open = new Set<Socket<undefined>>();
let idleOpen = 0;

function connect(kind: "idle" | "flood"): void {
  if (Date.now() >= endMs) return;
  Bun.connect({
    hostname: host!,
    port,
    socket: {
      open(socket) {
        counts.connects++;
        open.add(socket);
        if (kind === "idle") idleOpen++;
      },
      data() {},
      close(socket) {
        counts.closedByNode++;
        open.delete(socket);
        if (kind === "idle") {
          idleOpen--;
          setTimeout(() => connect("idle"), 10);
        }
        if (kind === "flood") connect("flood");
      },
      error() {},
    },
  }).catch(() => {
    counts.failedConnects++;
    setTimeout(() => connect(kind), 20);
  });
}

for (let index = 0; index < idle; index++) connect("idle");
for (let index = 0; index < inFlightMax; index++) connect("flood");
await new Promise((resolve) => setTimeout(resolve, Math.max(0, endMs - Date.now())));
for (const socket of open) socket.terminate();
console.log(JSON.stringify({ ...counts, idleOpenAtEnd: idleOpen }));
process.exit(0);
