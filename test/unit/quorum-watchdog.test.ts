// Proves the watchdog logic (src/quorum/watchdog.ts) against a fake device file (this machine has
// no /dev/watchdog): `auto` arms a device that exists and feeds it, loads softdog when the device is
// missing, and runs without one when neither works, saying why; `required` refuses to start without
// one; `off` arms nothing; a clean stop writes the magic 'V'; a device that is no real watchdog (a
// file: ENOTTY on WDIOC_SETTIMEOUT) is still armed, and the reason says the timeout is its own.
import { afterAll, describe, expect, test } from "bun:test";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { TandemError } from "../../src/common/errors.ts";
import { systemWatchdog, Watchdog, type WatchdogSystem } from "../../src/quorum/watchdog.ts";

const dir = fs.mkdtempSync(path.join(os.tmpdir(), "tandem-watchdog-"));
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

/** The real system calls on a fake device file, with softdog loading faked (it creates the file, or fails). */
function fakeSystem(softdog: "creates" | "missing"): WatchdogSystem & { loads: number } {
  const system = {
    ...systemWatchdog,
    loads: 0,
    loadSoftdog(): string | null {
      system.loads++;
      return softdog === "missing" ? "the softdog module is not available" : null;
    },
  };
  return system;
}

describe("auto", () => {
  test("a device that exists is armed, fed, and disarmed with the magic 'V' on a clean stop", () => {
    const device = path.join(dir, "watchdog-1");
    fs.writeFileSync(device, "");
    const watchdog = Watchdog.arm({ mode: "auto", device }, 3, fakeSystem("missing"));
    expect(watchdog.armed).toBe(true);
    // A file is no watchdog: WDIOC_SETTIMEOUT fails with ENOTTY; it is armed all the same and says so.
    expect(watchdog.state.reason).toBe(`watchdog armed on ${device}; its timeout could not be set (ioctl(WDIOC_SETTIMEOUT): ENOTTY), the device's own applies`);
    watchdog.feed();
    watchdog.feed();
    expect(fs.readFileSync(device, "utf8")).toBe("...");
    expect(watchdog.state.feeds).toBe(3);
    watchdog.disarm();
    expect(fs.readFileSync(device, "utf8")).toBe("...V");
    expect(watchdog.armed).toBe(false);
    watchdog.feed(); // nothing after the magic close
    expect(fs.readFileSync(device, "utf8")).toBe("...V");
  });

  test("a missing device: softdog is loaded, then the device it made is armed", () => {
    const device = path.join(dir, "watchdog-2");
    const system = fakeSystem("creates");
    const load = system.loadSoftdog;
    system.loadSoftdog = () => {
      fs.writeFileSync(device, "");
      return load();
    };
    const watchdog = Watchdog.arm({ mode: "auto", device }, 3, system);
    expect(system.loads).toBe(1);
    expect(watchdog.armed).toBe(true);
    watchdog.disarm();
  });

  test("no device and no softdog: runs without one and says why", () => {
    const device = path.join(dir, "no-such-watchdog");
    const watchdog = Watchdog.arm({ mode: "auto", device }, 3, fakeSystem("missing"));
    expect(watchdog.armed).toBe(false);
    expect(watchdog.state).toMatchObject({ armed: false, device: null, reason: `no watchdog: ${device} does not exist and the softdog module is not available` });
    watchdog.feed();
    watchdog.disarm();
    expect(watchdog.state.feeds).toBe(0);
  });

  test("on this machine: no /dev/watchdog and no softdog module, so auto runs without one", () => {
    if (fs.existsSync("/dev/watchdog")) return; // a machine with a watchdog: nothing to show here
    const watchdog = Watchdog.arm({ mode: "auto", device: "/dev/watchdog" }, 3);
    expect(watchdog.armed).toBe(false);
    expect(watchdog.state.reason).toStartWith("no watchdog: /dev/watchdog does not exist and ");
  });
});

describe("required and off", () => {
  test("required refuses to start without a watchdog, naming the reason", () => {
    const device = path.join(dir, "absent");
    let error: unknown;
    try {
      Watchdog.arm({ mode: "required", device }, 3, fakeSystem("missing"));
    } catch (caught) {
      error = caught;
    }
    expect(error).toBeInstanceOf(TandemError);
    expect((error as TandemError).code).toBe("failed_precondition");
    expect((error as Error).message).toBe(`no watchdog: ${device} does not exist and the softdog module is not available; the config requires one (watchdog = "required")`);
  });

  test("required arms a device that exists", () => {
    const device = path.join(dir, "watchdog-3");
    fs.writeFileSync(device, "");
    const watchdog = Watchdog.arm({ mode: "required", device }, 3, fakeSystem("missing"));
    expect(watchdog.armed).toBe(true);
    watchdog.disarm();
  });

  test("off never touches the device", () => {
    const device = path.join(dir, "watchdog-4");
    fs.writeFileSync(device, "");
    const system = fakeSystem("creates");
    const watchdog = Watchdog.arm({ mode: "off", device }, 3, system);
    expect(watchdog.armed).toBe(false);
    expect(watchdog.state.reason).toBe("watchdog is off in the config");
    expect(system.loads).toBe(0);
    expect(fs.readFileSync(device, "utf8")).toBe("");
  });
});
