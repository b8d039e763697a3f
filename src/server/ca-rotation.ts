import { createPrivateKey, X509Certificate } from 'node:crypto';
import { resolve } from 'node:path';
import { z } from 'zod';
import { MeshlinkError } from '../errors.js';
import { CertificateAuthority, type CaKeyType, type IssuedCertificate } from './ca.js';
import { openSealed, seal, type SealingSecret } from './ca-key-crypto.js';
import type { Store } from './store/store.js';

/**
 * CA rotation (docs/SERVER.md, "Rotating the CA"), in three phases kept in the store:
 *
 *   (none)  --start-->  started  --issue-->  issuing  --retire-->  (none, the next CA is the CA)
 *
 * - `started`: a next CA exists (its key sealed like the CA's, in meta). The gateway trusts client
 *   certificates of both; every agent is given both (the `caBundle` of welcome and of enroll/renew
 *   answers) and adds the next CA's pin. The old CA still issues everything.
 * - `issuing`: the next CA issues enrollments and renewals and the server's TLS certificate. Agents
 *   connected at `start` got the bundle then (`ca.bundle`), later ones in their welcome.
 * - `retire`: refused while a live node's newest certificate is from the old CA (unless forced); then
 *   the next CA replaces the CA row and the old one is trusted no more, from this moment on.
 *
 * This object is the one owner of "which CA issues, which CAs are trusted": enrollment, client
 * authentication and the gateway ask it instead of holding a CA of their own.
 */

export const META_CA_ROTATION = 'ca_rotation';

export type RotationPhase = 'none' | 'started' | 'issuing';

const rotationRowSchema = z.object({
  phase: z.enum(['started', 'issuing']),
  certPem: z.string().min(1),
  keyBlob: z.string().min(1),
  kdfSalt: z.string().min(1),
  startedAt: z.number().int(),
});
type RotationRow = z.infer<typeof rotationRowSchema>;

export interface NodeOnCa {
  nodeId: string;
  hostname: string;
  certSerial: string;
}

export interface RotationStatus {
  phase: RotationPhase;
  current: { pin: string; fingerprint256: string; nodes: number };
  next: { pin: string; fingerprint256: string; nodes: number } | null;
  startedAt: string | null;
  /** Live nodes whose newest certificate is from neither CA (e.g. issued by a CA retired by force). */
  otherNodes: number;
}

export class CaRing {
  #current: CertificateAuthority;
  #next: CertificateAuthority | null;
  #phase: RotationPhase;
  #startedAt: number | null;
  #starting = false;
  readonly #listeners: Array<() => void> = [];

  private constructor(current: CertificateAuthority, next: CertificateAuthority | null, phase: RotationPhase, startedAt: number | null) {
    this.#current = current;
    this.#next = next;
    this.#phase = phase;
    this.#startedAt = startedAt;
  }

  /** The ring as the store has it: the CA, plus the next CA of a rotation under way. */
  static async load(store: Store, current: CertificateAuthority, secret: SealingSecret): Promise<CaRing> {
    const raw = await store.getMeta(META_CA_ROTATION);
    if (raw === undefined) return new CaRing(current, null, 'none', null);
    const row = rotationRowSchema.parse(JSON.parse(raw));
    const pkcs8 = await openSealed(Buffer.from(row.keyBlob, 'base64'), Buffer.from(row.kdfSalt, 'base64'), secret, resolve(store.path));
    const keyPem = createPrivateKey({ key: pkcs8, format: 'der', type: 'pkcs8' }).export({ type: 'pkcs8', format: 'pem' });
    return new CaRing(current, CertificateAuthority.fromPem(row.certPem, keyPem), row.phase, row.startedAt);
  }

  get phase(): RotationPhase {
    return this.#phase;
  }

  /** The CA that issues node certificates and the server's certificate now. */
  get issuer(): CertificateAuthority {
    return this.#phase === 'issuing' && this.#next ? this.#next : this.#current;
  }

  /** What enrollment answers carry as `caCertificate` and GET /v1/ca serves: the issuing CA. */
  get certPem(): string {
    return this.issuer.certPem;
  }

  /** Every trusted CA: the CA, then the next one during a rotation. */
  get trusted(): readonly CertificateAuthority[] {
    return this.#next ? [this.#current, this.#next] : [this.#current];
  }

  /** The CA certificates every agent is given (welcome, enroll and renew answers). */
  bundle(): string[] {
    return this.trusted.map((ca) => ca.certPem);
  }

  issueClientCertificate(options: Parameters<CertificateAuthority['issueClientCertificate']>[0]): Promise<IssuedCertificate> {
    return this.issuer.issueClientCertificate(options);
  }

  /** True when `cert` is signed by a trusted CA. */
  signed(cert: X509Certificate): boolean {
    return this.trusted.some((ca) => ca.signed(cert));
  }

  /**
   * The server's TLS certificate, from the issuing CA. No cross-certificate for agents that missed the
   * `start` phase: every CA is made with pathLenConstraint 0, which forbids an intermediate below the
   * old CA, so such an agent cannot verify a next-CA server certificate (docs/SERVER.md says when to issue).
   */
  issueServerCertificate(names: readonly string[]): ReturnType<CertificateAuthority['issueServerCertificate']> {
    return this.issuer.issueServerCertificate(names);
  }

  /** Called after every phase change (the server re-issues its TLS certificate and trust). */
  onChange(fn: () => void): void {
    this.#listeners.push(fn);
  }

  async start(store: Store, options: { keyType: CaKeyType; secret: SealingSecret }): Promise<void> {
    if (this.#phase !== 'none') throw phaseError(`a rotation is already ${this.#phase}; continue with \`issue\` or \`retire\``);
    // Key generation takes seconds: a second `start` meanwhile must not make (and announce) another CA.
    if (this.#starting) throw phaseError('a rotation is being started; run `server ca status` in a moment');
    this.#starting = true;
    let next: CertificateAuthority;
    let sealed: Awaited<ReturnType<typeof seal>>;
    try {
      next = await CertificateAuthority.create({ keyType: options.keyType });
      sealed = await seal(next.exportKeyPkcs8Der(), options.secret);
    } finally {
      this.#starting = false;
    }
    const { blob, salt } = sealed;
    const startedAt = Date.now();
    const row: RotationRow = { phase: 'started', certPem: next.certPem, keyBlob: blob.toString('base64'), kdfSalt: salt.toString('base64'), startedAt };
    await store.setMeta(META_CA_ROTATION, JSON.stringify(row));
    this.#next = next;
    this.#phase = 'started';
    this.#startedAt = startedAt;
    this.#changed();
  }

  async issue(store: Store): Promise<void> {
    if (this.#phase !== 'started') throw phaseError(this.#phase === 'none' ? 'no rotation is under way; run `start` first' : 'the next CA already issues');
    const row = rotationRowSchema.parse(JSON.parse((await store.getMeta(META_CA_ROTATION)) ?? 'null'));
    await store.setMeta(META_CA_ROTATION, JSON.stringify({ ...row, phase: 'issuing' }));
    this.#phase = 'issuing';
    this.#changed();
  }

  /** Live nodes whose newest certificate is from the old CA. */
  async nodesOnOldCa(store: Store): Promise<NodeOnCa[]> {
    return (await this.#nodesBy(store)).old;
  }

  async retire(store: Store, options: { force: boolean; metaCaPin: string }): Promise<{ retiredPin: string; pin: string; stranded: NodeOnCa[] }> {
    if (this.#phase !== 'issuing' || !this.#next) throw phaseError(this.#phase === 'none' ? 'no rotation is under way' : 'run `issue` first, and retire once the nodes have renewed');
    const stranded = await this.nodesOnOldCa(store);
    if (stranded.length > 0 && !options.force) {
      const shown = stranded.slice(0, 20).map((n) => `${n.hostname} (${n.nodeId})`).join(', ');
      throw new MeshlinkError(
        'ML_ERR_CA_RETIRE_BLOCKED',
        `${stranded.length} live node(s) still hold a certificate of the old CA: ${shown}${stranded.length > 20 ? ', …' : ''}; wait for their renewal, remove them, or pass --force`,
      );
    }
    const row = rotationRowSchema.parse(JSON.parse((await store.getMeta(META_CA_ROTATION)) ?? 'null'));
    const next = this.#next;
    await store.replaceCa(
      { keyBlob: Buffer.from(row.keyBlob, 'base64'), kdfSalt: Buffer.from(row.kdfSalt, 'base64'), certPem: next.certPem, createdAt: row.startedAt },
      async (tx) => {
        await store.deleteMeta(META_CA_ROTATION, tx);
        await store.setMeta(options.metaCaPin, next.pin, tx);
      },
    );
    const retiredPin = this.#current.pin;
    this.#current = next;
    this.#next = null;
    this.#phase = 'none';
    this.#startedAt = null;
    this.#changed();
    return { retiredPin, pin: next.pin, stranded };
  }

  async status(store: Store): Promise<RotationStatus> {
    const by = await this.#nodesBy(store);
    const describe = (ca: CertificateAuthority, nodes: number): { pin: string; fingerprint256: string; nodes: number } => ({ pin: ca.pin, fingerprint256: ca.cert.fingerprint256, nodes });
    return {
      phase: this.#phase,
      current: describe(this.#current, by.old.length),
      next: this.#next ? describe(this.#next, by.next.length) : null,
      startedAt: this.#startedAt === null ? null : new Date(this.#startedAt).toISOString(),
      otherNodes: by.other,
    };
  }

  async #nodesBy(store: Store): Promise<{ old: NodeOnCa[]; next: NodeOnCa[]; other: number }> {
    const old: NodeOnCa[] = [];
    const next: NodeOnCa[] = [];
    let other = 0;
    for (const node of await store.listLiveNodes()) {
      if (node.certSerial === null) continue;
      const row = await store.getCert(node.certSerial);
      if (!row) continue;
      const cert = new X509Certificate(row.pem);
      const entry = { nodeId: node.id, hostname: node.hostname, certSerial: node.certSerial };
      if (this.#current.signed(cert)) old.push(entry);
      else if (this.#next?.signed(cert)) next.push(entry);
      else other++;
    }
    return { old, next, other };
  }

  #changed(): void {
    for (const fn of this.#listeners) fn();
  }
}

function phaseError(message: string): MeshlinkError {
  return new MeshlinkError('ML_ERR_CA_ROTATION_PHASE', message);
}

/** For logs: the pins of a ring. */
export function ringPins(ring: CaRing): string[] {
  return ring.trusted.map((ca) => ca.pin);
}
