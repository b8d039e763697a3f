import { open } from 'node:fs/promises';

/**
 * The last `lines` lines of the first `end` bytes of `path` (at most `capBytes` read), for log.stream
 * (log-tail.ts). Reads backwards in blocks, so a tail of a large file costs what it returns.
 */
export async function readLastLines(path: string, lines: number, end: number, capBytes = 16 * 1024 * 1024): Promise<Buffer> {
  if (lines <= 0 || end <= 0) return Buffer.alloc(0);
  const handle = await open(path, 'r');
  try {
    const block = 64 * 1024;
    const parts: Buffer[] = [];
    let pos = end;
    let newlines = 0;
    let read = 0;
    // The file ends with a newline: look for lines+1 of them to find where the wanted lines start.
    while (pos > 0 && newlines <= lines && read < capBytes) {
      const len = Math.min(block, pos);
      pos -= len;
      const buf = Buffer.allocUnsafe(len);
      const { bytesRead } = await handle.read(buf, 0, len, pos);
      const chunk = buf.subarray(0, bytesRead);
      parts.unshift(chunk);
      read += bytesRead;
      for (let i = 0; i < chunk.length; i++) if (chunk[i] === 0x0a) newlines++;
    }
    const all = Buffer.concat(parts);
    let count = 0;
    let start = 0;
    for (let i = all.length - 2; i >= 0; i--) {
      if (all[i] === 0x0a && ++count === lines) {
        start = i + 1;
        break;
      }
    }
    return all.subarray(start);
  } finally {
    await handle.close();
  }
}
