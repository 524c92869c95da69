// `tandem node run --config FILE`: the daemon itself, in the foreground (systemd's ExecStart, the
// lab's node processes). Logs go to stdout as JSON lines; SIGTERM or SIGINT drains and exits 0 (1 if a shutdown step failed; the log names it).
import { Command, Option } from "clipanion";
import { createLogger, isLogLevel } from "../../../common/log.ts";
import { TandemError } from "../../../common/errors.ts";
import { loadNodeConfig } from "../../../node/config.ts";
import { TandemCommand } from "../../base.ts";

export class NodeRunCommand extends TandemCommand {
  static override paths = [["node", "run"]];
  static override usage = Command.Usage({
    category: "Node",
    description: "Run the node daemon in the foreground",
    details: `
      Opens the data directory named in the config file, every volume in it, the NBD listener and
      the recorded vhost-user exports, then serves the control API on the config's control socket
      until SIGTERM or SIGINT, when in-flight IO drains and the process exits 0 (1 if a shutdown step failed, logged). The config is JSON
      (\`.json\`) or TOML; see docs/configuration.md. Logs are JSON lines on stdout.
    `,
    examples: [["Run the daemon as systemd does", "tandem node run --config /etc/tandem/node.toml"]],
  });

  config = Option.String("--config", { required: true, description: "Path of the node's config file (JSON or TOML)" });
  logLevel = Option.String("--log-level", { description: "debug, info, warn or error (overrides the config)" });

  async run(): Promise<number> {
    const config = loadNodeConfig(this.config);
    const level = this.logLevel ?? config.logLevel;
    if (!isLogLevel(level)) throw new TandemError("invalid_argument", `--log-level must be debug, info, warn or error`);
    const log = createLogger({ level, sink: (line) => this.context.stdout.write(line + "\n"), fields: { node: config.name } });
    // Loaded here, not at the top: every other command (and --version) starts without the daemon.
    const [{ startNode }, { createNodeReplication }] = await Promise.all([import("../../../node/daemon.ts"), import("../../../node/replica/replication.ts")]);
    const node = await startNode(config, log, createNodeReplication);
    const onSignal = (signal: string) => void node.stop(`signal ${signal}`);
    process.on("SIGTERM", () => onSignal("SIGTERM"));
    process.on("SIGINT", () => onSignal("SIGINT"));
    const { clean } = await node.stopped;
    return clean ? 0 : 1;
  }
}
