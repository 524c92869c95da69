// The status report's JSON Schema (docs/status.schema.json) compiled once with Ajv, for the tests
// that validate real daemon output against the documented contract.
import Ajv2020 from "ajv/dist/2020.js";
import fs from "node:fs";
import path from "node:path";
import { repositoryRoot } from "./daemon.ts";

const schema = JSON.parse(fs.readFileSync(path.join(repositoryRoot, "docs/status.schema.json"), "utf8"));
const validate = new Ajv2020({ allErrors: true, strict: true }).compile(schema);

/** Throws with every violation when `report` does not match the schema. */
export function assertStatusSchema(report: unknown): void {
  if (!validate(report)) throw new Error(`status report does not match docs/status.schema.json:\n${JSON.stringify(validate.errors, null, 2)}\n${JSON.stringify(report, null, 2)}`);
}
