// Bounds how many reports of one family (refused connections, rejected frames) leave a core, so a
// stranger who opens thousands of connections cannot flood the log and the event log. Fixed
// windows: a window opens with the first report; up to `perWindow` reports pass in it, and at most
// `perCode` of one code, so a flood of one kind cannot crowd out another (the real peer's wrong
// secret among a stranger's evictions); the rest are counted by code, and when the window ends
// the caller gets one summary of what was held back. Pure: time is the caller's tick count.

export interface SuppressedSummary {
  count: number;
  byCode: Record<string, number>;
  windowTicks: number;
}

export class ReportLimiter {
  private windowStart: number | undefined;
  private passed = 0;
  private passedByCode = new Map<string, number>();
  private suppressed = new Map<string, number>();

  constructor(
    private readonly perWindow: number,
    private readonly perCode: number,
    private readonly windowTicks: number,
  ) {}

  /** Close the window if it is over; its summary when anything was held back. */
  roll(now: number): SuppressedSummary | undefined {
    if (this.windowStart === undefined || now - this.windowStart < this.windowTicks) return undefined;
    const summary = this.summary();
    this.windowStart = undefined;
    this.passed = 0;
    this.passedByCode = new Map();
    this.suppressed = new Map();
    return summary;
  }

  /** The tick at which `roll` will return a summary (undefined: nothing is held back). */
  get summaryDueTick(): number | undefined {
    return this.windowStart === undefined || this.suppressed.size === 0 ? undefined : this.windowStart + this.windowTicks;
  }

  /** Whether a report of `code` may go out at `now` (call `roll` first); if not, it is counted. */
  admit(code: string, now: number): boolean {
    if (this.windowStart === undefined) this.windowStart = now;
    const passedOfCode = this.passedByCode.get(code) ?? 0;
    if (this.passed < this.perWindow && passedOfCode < this.perCode) {
      this.passed++;
      this.passedByCode.set(code, passedOfCode + 1);
      return true;
    }
    this.suppressed.set(code, (this.suppressed.get(code) ?? 0) + 1);
    return false;
  }

  private summary(): SuppressedSummary | undefined {
    if (this.suppressed.size === 0) return undefined;
    let count = 0;
    for (const value of this.suppressed.values()) count += value;
    return { count, byCode: Object.fromEntries(this.suppressed), windowTicks: this.windowTicks };
  }
}
