#!/usr/bin/env bun
// Entry point of the `tandem` program: the CLI, and (`tandem node run`) the daemon itself.
// Command-line mistakes clipanion finds before a command runs (unknown command, missing argument)
// are printed to stderr with the usage and exit 2, like every other usage error (base.ts).
import { Cli } from "clipanion";
import { exitCodes } from "./base.ts";
import { createCli } from "./commands.ts";

const cli = createCli();
const argv = process.argv.slice(2);
let parsed = true;
try {
  cli.process(argv);
} catch (error) {
  parsed = false;
  process.stderr.write(cli.error(error, { colored: process.stderr.isTTY === true }));
  process.exitCode = exitCodes.usage;
}
if (parsed) process.exitCode = await cli.run(argv, Cli.defaultContext);
