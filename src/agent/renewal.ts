/**
 * When to renew (docs/AGENT.md, "Renewal"): at whichever comes first of
 * - `renewBeforeMs` before NotAfter (default 7 days), and
 * - `lifetimeFraction` of the lifetime (default two thirds),
 * but never before half the lifetime, so that a short-lived certificate (shorter than the margin) is
 * not renewed the moment it arrives. For a 30-day certificate that is day 20; for a 60-second one,
 * second 30.
 *
 * The lifetime is counted from `start` = the later of NotBefore and the time the agent received the
 * certificate, because the server backdates NotBefore by a few minutes against clock skew.
 */
export interface RenewPolicy {
  renewBeforeMs: number;
  lifetimeFraction: number;
}

export const DEFAULT_RENEW_POLICY: RenewPolicy = Object.freeze({ renewBeforeMs: 7 * 86_400_000, lifetimeFraction: 2 / 3 });

export function renewalDueAt(start: number, notAfter: number, policy: RenewPolicy = DEFAULT_RENEW_POLICY): number {
  const lifetime = Math.max(0, notAfter - start);
  const byMargin = notAfter - policy.renewBeforeMs;
  const byFraction = start + lifetime * policy.lifetimeFraction;
  return Math.max(start + lifetime / 2, Math.min(byMargin, byFraction));
}
