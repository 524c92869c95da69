// Every command, registered by main.ts and by the in-process CLI tests.
import { Builtins, Cli } from "clipanion";
import { tandemVersion } from "../common/version.ts";
import { EventsCommand } from "./commands/events.ts";
import { InstallCommand } from "./commands/install.ts";
import { ExportListCommand } from "./commands/export/list.ts";
import { ExportRemoveCommand } from "./commands/export/remove.ts";
import { ExportVhostCommand } from "./commands/export/vhost.ts";
import { LabDownCommand } from "./commands/lab/down.ts";
import { LabCutCommand, LabDelayCommand, LabHealCommand } from "./commands/lab/link.ts";
import { VerifyCommand } from "./commands/verify.ts";
import { FailoverCommand } from "./commands/failover.ts";
import { VolumeResolveCommand } from "./commands/volume/resolve.ts";
import { LabKillCommand } from "./commands/lab/kill.ts";
import { LabRelayCommand } from "./commands/lab/relay.ts";
import { LabStartCommand } from "./commands/lab/start.ts";
import { LabStatusCommand } from "./commands/lab/status.ts";
import { LabUpCommand } from "./commands/lab/up.ts";
import { LabPauseCommand, LabResumeCommand } from "./commands/lab/pause.ts";
import { LabWitnessFailCommand, LabWitnessHangCommand, LabWitnessHealCommand } from "./commands/lab/witness.ts";
import { NodeRunCommand } from "./commands/node/run.ts";
import { StatusCommand } from "./commands/status.ts";
import { TuiCommand } from "./commands/tui.ts";
import { VolumeCopyOutCommand } from "./commands/volume/copy-out.ts";
import { VolumeCreateCommand } from "./commands/volume/create.ts";
import { VolumeDeleteCommand } from "./commands/volume/delete.ts";
import { VolumeListCommand } from "./commands/volume/list.ts";
import { VolumeResizeCommand } from "./commands/volume/resize.ts";
import { VolumeOnFreezeCommand } from "./commands/volume/on-freeze.ts";
import { WitnessFormatCommand } from "./commands/witness/format.ts";
import { WitnessShowCommand } from "./commands/witness/show.ts";

export const commands = [
  NodeRunCommand,
  StatusCommand,
  EventsCommand,
  VolumeCreateCommand,
  VolumeListCommand,
  VolumeResizeCommand,
  VolumeOnFreezeCommand,
  VolumeDeleteCommand,
  ExportVhostCommand,
  ExportListCommand,
  ExportRemoveCommand,
  LabUpCommand,
  LabDownCommand,
  LabStatusCommand,
  LabKillCommand,
  LabStartCommand,
  LabCutCommand,
  LabHealCommand,
  LabDelayCommand,
  LabRelayCommand,
  LabWitnessFailCommand,
  LabWitnessHangCommand,
  LabWitnessHealCommand,
  LabPauseCommand,
  LabResumeCommand,
  VerifyCommand,
  FailoverCommand,
  VolumeResolveCommand,
  TuiCommand,
  VolumeCopyOutCommand,
  WitnessFormatCommand,
  WitnessShowCommand,
  InstallCommand,
];

export function createCli(): Cli {
  const cli = new Cli({ binaryLabel: "Tandem", binaryName: "tandem", binaryVersion: tandemVersion, enableCapture: false });
  cli.register(Builtins.HelpCommand);
  cli.register(Builtins.VersionCommand);
  for (const command of commands) cli.register(command);
  return cli;
}
