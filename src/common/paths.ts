// Path checks shared by the daemon's validations: what a path really names, following symbolic
// links, even when its last components do not exist yet (a file about to be created).
import fs from "node:fs";
import path from "node:path";

/** The real path of `target`'s longest existing ancestor, with the rest appended as written. */
export function realPathOfExisting(target: string): string {
  const missing: string[] = [];
  let current = path.resolve(target);
  for (;;) {
    try {
      return path.join(fs.realpathSync(current), ...missing.reverse());
    } catch {
      const parent = path.dirname(current);
      if (parent === current) return path.resolve(target);
      missing.push(path.basename(current));
      current = parent;
    }
  }
}

/** Whether `candidate` is `directory` or lies below it (both already absolute and normalised). */
export function isInside(directory: string, candidate: string): boolean {
  return candidate === directory || candidate.startsWith(directory.endsWith("/") ? directory : directory + "/");
}
