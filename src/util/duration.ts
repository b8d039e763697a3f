import { MeshlinkError } from '../errors.js';
/**
 * Durations on the command line: whole numbers with units, largest first, e.g. `500ms`, `90s`, `60m`,
 * `1h`, `1h30m`, `30d`. No fractions, no signs, no spaces inside, each unit at most once, in the
 * order d, h, m, s, ms (so `30m1h` is refused rather than guessed at).
 */
const UNIT_MS = { ms: 1, s: 1_000, m: 60_000, h: 3_600_000, d: 86_400_000 } as const;
type Unit = keyof typeof UNIT_MS;
const ORDER: readonly Unit[] = ['d', 'h', 'm', 's', 'ms'];

const DURATION_RE = /^(?:\d{1,12}(?:ms|s|m|h|d))+$/;
const PART_RE = /(\d{1,12})(ms|s|m|h|d)/g;

export function parseDuration(text: string): number {
  const trimmed = text.trim();
  const invalid = (): MeshlinkError =>
    new MeshlinkError('ML_ERR_DURATION', `invalid duration "${text}": expected whole numbers with units (ms, s, m, h, d), largest first, e.g. 90s, 1h30m, 30d`);
  if (!DURATION_RE.test(trimmed)) throw invalid();
  let value = 0;
  let last = -1;
  for (const [, digits, unit] of trimmed.matchAll(PART_RE)) {
    const rank = ORDER.indexOf(unit as Unit);
    if (rank <= last) throw invalid();
    last = rank;
    value += Number(digits) * UNIT_MS[unit as Unit];
  }
  if (!Number.isSafeInteger(value)) throw new MeshlinkError('ML_ERR_DURATION', `duration "${text}" is too large`);
  return value;
}

/** Inverse for messages: the largest unit that divides the value exactly. */
export function formatDuration(ms: number): string {
  for (const unit of ['d', 'h', 'm', 's'] as const) {
    if (ms > 0 && ms % UNIT_MS[unit] === 0) return `${ms / UNIT_MS[unit]}${unit}`;
  }
  return `${ms}ms`;
}
