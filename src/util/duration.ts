import { MeshlinkError } from '../errors.js';
/**
 * Durations on the command line: an integer followed by a unit, e.g. `500ms`, `90s`, `60m`, `1h`, `30d`.
 * Deliberately tiny: one number, one unit, no fractions, no combinations.
 */
const UNIT_MS = { ms: 1, s: 1_000, m: 60_000, h: 3_600_000, d: 86_400_000 } as const;

const DURATION_RE = /^(\d{1,12})(ms|s|m|h|d)$/;

export function parseDuration(text: string): number {
  const match = DURATION_RE.exec(text.trim());
  if (!match) {
    throw new MeshlinkError('ML_ERR_DURATION', `invalid duration "${text}": expected a whole number and a unit (ms, s, m, h, d), e.g. 90s, 1h, 30d`);
  }
  const value = Number(match[1]) * UNIT_MS[match[2] as keyof typeof UNIT_MS];
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
