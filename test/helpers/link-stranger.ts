// A stranger on the replication network, run as its own process by the starvation test so its
// connection flood does not share the test's event loop:
//   bun test/helpers/link-stranger.ts HOST PORT IDLE SECONDS [LOCAL_ADDRESS]
// For SECONDS it keeps IDLE connections open that never send a byte (reopening any the node
// closes), and floods: as many new connections at once as it can keep in flight (up to 64), each
// left open until the node closes it. Every connection leaves from LOCAL_ADDRESS when one is given
// (another loopback address stands for another machine on the network). Then it closes
// everything, prints one JSON line with what it did, and exits by itself.
import net from "node:net";

const [host, portText, idleText, secondsText, localAddress] = process.argv.slice(2);
const port = Number(portText);
const idle = Number(idleText);
const endMs = Date.now() + Number(secondsText) * 1000;
const inFlightMax = 64;

const counts = { connects: 0, failedConnects: 0, closedByNode: 0 };
const open = new Set<net.Socket>();
let idleOpen = 0;
let ending = false;

function connect(kind: "idle" | "flood"): void {
  if (Date.now() >= endMs) return;
  const socket = net.connect({ host: host!, port, ...(localAddress ? { localAddress } : {}) });
  let opened = false;
  socket.on("connect", () => {
    opened = true;
    counts.connects++;
    open.add(socket);
    if (kind === "idle") idleOpen++;
  });
  socket.on("data", () => {});
  socket.on("error", () => {});
  socket.on("close", () => {
    open.delete(socket);
    if (ending) return;
    if (!opened) {
      counts.failedConnects++;
      setTimeout(() => connect(kind), 20);
      return;
    }
    counts.closedByNode++;
    if (kind === "idle") {
      idleOpen--;
      setTimeout(() => connect("idle"), 10);
    } else connect("flood");
  });
}

for (let index = 0; index < idle; index++) connect("idle");
for (let index = 0; index < inFlightMax; index++) connect("flood");
await new Promise((resolve) => setTimeout(resolve, Math.max(0, endMs - Date.now())));
ending = true;
for (const socket of open) socket.destroy();
console.log(JSON.stringify({ ...counts, idleOpenAtEnd: idleOpen }));
process.exit(0);
