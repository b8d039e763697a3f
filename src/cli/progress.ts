/**
 * Progress of long work (`server cp`: hashing the local file, sending, receiving) on stderr, only
 * when stderr is a terminal: a log file or a pipe gets nothing, and stdout, which carries the result,
 * never gets any. One line redrawn in place (`\r` and erase to the end of line), at most ten times a
 * second (redraws are dropped, not queued, so a fast transfer costs nothing), and a final draw with
 * a newline when a phase ends.
 */

const REDRAW_EVERY_MS = 100;
/** The rate is measured over this window, so the ETA follows changes of speed. */
const RATE_WINDOW_MS = 3_000;

export interface Progress {
  /** `done` bytes of `total` (null when the size is not known yet, e.g. a pull before its end). */
  update(phase: string, done: number, total: number | null): void;
  /** Ends the current line (if one was drawn). */
  finish(): void;
}

export function terminalProgress(out: NodeJS.WriteStream = process.stderr, now: () => number = Date.now): Progress | null {
  if (!out.isTTY) return null;
  let phase = '';
  let lastDraw = 0;
  let drawn = false;
  let samples: Array<{ t: number; done: number }> = [];
  let last: { done: number; total: number | null } = { done: 0, total: null };

  const draw = (t: number): void => {
    const first = samples[0];
    const elapsed = first ? t - first.t : 0;
    const rate = first && elapsed > 0 ? ((last.done - first.done) * 1000) / elapsed : null;
    const parts = [`${phase} ${bytes(last.done)}${last.total === null ? '' : ` / ${bytes(last.total)}`}`];
    if (last.total !== null && last.total > 0) parts.push(`${Math.floor((last.done * 100) / last.total)}%`);
    if (rate !== null) parts.push(`${bytes(rate)}/s`);
    if (rate !== null && rate > 0 && last.total !== null && last.total > last.done) parts.push(`ETA ${eta((last.total - last.done) / rate)}`);
    out.write(`\r${parts.join('  ')}\x1b[K`);
    drawn = true;
    lastDraw = t;
  };

  return {
    update(nextPhase, done, total) {
      const t = now();
      if (nextPhase !== phase) {
        if (drawn) {
          draw(t);
          out.write('\n');
        }
        phase = nextPhase;
        samples = [];
        drawn = false;
        lastDraw = 0;
      }
      last = { done, total };
      // One sample per redraw interval keeps the window small whatever the chunk rate.
      if (samples.length === 0 || t - samples[samples.length - 1]!.t >= REDRAW_EVERY_MS) samples.push({ t, done });
      while (samples.length > 2 && t - samples[0]!.t > RATE_WINDOW_MS) samples.shift();
      if (t - lastDraw >= REDRAW_EVERY_MS || (total !== null && done >= total)) draw(t);
    },
    finish() {
      if (!drawn) return;
      draw(now());
      out.write('\n');
      drawn = false;
    },
  };
}

function bytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = n;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return i === 0 ? `${Math.round(v)} B` : `${v.toFixed(1)} ${units[i]}`;
}

function eta(seconds: number): string {
  const s = Math.ceil(seconds);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, '0')}s`;
  return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, '0')}m`;
}
