// Structured logs: one JSON object per line ({"time","level","component","msg",...fields}), written
// to the daemon's stdout so systemd's journal (or the lab's log file) keeps them. Components get a
// child logger; the sink is injectable so tests capture lines instead of printing them.

export type LogLevel = "debug" | "info" | "warn" | "error";
const levelRank: Record<LogLevel, number> = { debug: 10, info: 20, warn: 30, error: 40 };

export type LogFields = Record<string, unknown>;
export type LogSink = (line: string) => void;

export interface Logger {
  debug(msg: string, fields?: LogFields): void;
  info(msg: string, fields?: LogFields): void;
  warn(msg: string, fields?: LogFields): void;
  error(msg: string, fields?: LogFields): void;
  child(component: string, fields?: LogFields): Logger;
}

export function isLogLevel(value: unknown): value is LogLevel {
  return typeof value === "string" && value in levelRank;
}

function serialise(value: unknown): unknown {
  if (value instanceof Error) return { name: value.name, message: value.message, code: (value as { code?: unknown }).code };
  if (typeof value === "bigint") return value.toString();
  return value;
}

export function createLogger(options: { level?: LogLevel; sink?: LogSink; component?: string; fields?: LogFields } = {}): Logger {
  const threshold = levelRank[options.level ?? "info"];
  const sink = options.sink ?? ((line: string) => process.stdout.write(line + "\n"));
  const make = (component: string, base: LogFields): Logger => {
    const emit = (level: LogLevel, msg: string, fields?: LogFields) => {
      if (levelRank[level] < threshold) return;
      const record: LogFields = { time: new Date().toISOString(), level, component, msg, ...base };
      if (fields) for (const [key, value] of Object.entries(fields)) record[key] = serialise(value);
      sink(JSON.stringify(record));
    };
    return {
      debug: (msg, fields) => emit("debug", msg, fields),
      info: (msg, fields) => emit("info", msg, fields),
      warn: (msg, fields) => emit("warn", msg, fields),
      error: (msg, fields) => emit("error", msg, fields),
      child: (name, fields) => make(component ? `${component}.${name}` : name, { ...base, ...fields }),
    };
  };
  return make(options.component ?? "", options.fields ?? {});
}

/** A logger that drops everything: for unit tests that do not look at logs. */
export const silentLogger: Logger = createLogger({ sink: () => {} , level: "error" });
