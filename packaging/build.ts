// The `bun build --compile` recipe of dist/tandem (run by packaging/build.sh), in Bun's JS API
// because one import needs a stand-in the command line cannot express:
//   minify + bytecode: the code is parsed at build time, not at every start (about 2x faster
//     `tandem --version`, docs/benchmarks.md); bytecode needs ESM output named explicitly.
//   autoloadDotenv/autoloadBunfig off: the binary must not read a .env or bunfig.toml from whatever
//     directory it is started in (a daemon's environment comes from its unit, nothing else).
//   react-devtools-core → an empty module: Ink imports it only under DEV=true for React DevTools;
//     it is not a dependency, the dashboard never needs it, and left unresolved it would be a
//     start-up import of the whole binary.
import path from "node:path";

const root = path.resolve(import.meta.dir, "..");
const result = await Bun.build({
  entrypoints: [path.join(root, "src/cli/main.ts")],
  compile: { outfile: path.join(root, "dist/tandem"), autoloadDotenv: false, autoloadBunfig: false },
  minify: true,
  bytecode: true,
  format: "esm",
  plugins: [
    {
      name: "no-react-devtools",
      setup(build) {
        build.onResolve({ filter: /^react-devtools-core$/ }, () => ({ path: "react-devtools-core", namespace: "no-react-devtools" }));
        build.onLoad({ filter: /.*/, namespace: "no-react-devtools" }, () => ({ contents: "export default {};", loader: "js" }));
      },
    },
  ],
});
if (!result.success) {
  for (const log of result.logs) console.error(String(log));
  process.exit(1);
}
