// The program's version, in a module of its own so `tandem --version` and the CLI's start-up do not
// load the daemon to print it. packaging/deb.sh reads it for the package version.
export const tandemVersion = "0.1.0";
