/**
 * Text from elsewhere (a hostname, an agent version, a log line an agent sent) made safe for a
 * terminal: control characters (C0, DEL, C1, which can move the cursor or retitle the window) are
 * shown as `\xNN` instead of being written raw.
 */
export function printable(text: string): string {
  // eslint-disable-next-line no-control-regex
  return text.replace(/[\u0000-\u001f\u007f-\u009f]/g, (c) => `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}`);
}

/** Writes rows (the first is the header) as columns padded to their widest cell, two spaces apart; every cell made printable. */
export function printTable(rows: readonly (readonly string[])[]): void {
  const safe = rows.map((r) => r.map(printable));
  const widths = safe[0]!.map((_, i) => Math.max(...safe.map((r) => r[i]!.length)));
  for (const r of safe) process.stdout.write(r.map((c, i) => c.padEnd(widths[i]!)).join('  ').trimEnd() + '\n');
}
