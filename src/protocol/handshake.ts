/**
 * Version negotiation (docs/PROTOCOL.md §5). The agent's hello lists every protocol version it
 * speaks; the server answers welcome with the highest version both speak, or an `error` frame with
 * ML_ERR_NO_COMMON_VERSION followed by close code 4010.
 */

/**
 * Versions this implementation speaks (docs/PROTOCOL.md). Version 2 differs from 1 in one rule:
 * typed stream messages (exec.stderr, action.output, ...) consume window credit like stream.data
 * (§6.5). A version-1 peer is still served, with typed messages capped instead (§6.3).
 */
export const SUPPORTED_VERSIONS: readonly number[] = Object.freeze([1, 2]);

/** The highest version in both lists, or null when they share none. */
export function negotiateVersion(offered: readonly number[], supported: readonly number[] = SUPPORTED_VERSIONS): number | null {
  let best: number | null = null;
  for (const v of offered) {
    if (supported.includes(v) && (best === null || v > best)) best = v;
  }
  return best;
}
