// The polling helpers live in until.ts; this name stays for the tests that import it from here.
export { eventually } from "./until.ts";
