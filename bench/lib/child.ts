import type { ChildProcess } from 'node:child_process';
import { readFile } from 'node:fs/promises';

/** The resident set of a process, MB (0 once it is gone or where /proc is not there). */
export function rssMb(pid: number): Promise<number> {
  return readFile(`/proc/${pid}/status`, 'utf8').then(
    (s) => Number(/VmRSS:\s+(\d+)/.exec(s)?.[1] ?? 0) / 1024,
    () => 0,
  );
}

/** Resolves with the first match of `pattern` in what the child wrote (stdout and stderr together). */
export function waitForOutput(child: ChildProcess, pattern: RegExp, timeoutMs = 60_000): Promise<string> {
  return new Promise((resolve, reject) => {
    let out = '';
    const timer = setTimeout(() => reject(new Error(`timeout waiting for ${pattern}: ${out.slice(-2000)}`)), timeoutMs);
    const on = (c: Buffer): void => {
      out += c.toString();
      const m = pattern.exec(out);
      if (m) {
        clearTimeout(timer);
        resolve(m[0]);
      }
    };
    child.stdout!.on('data', on);
    child.stderr!.on('data', on);
  });
}
