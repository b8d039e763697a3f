import { describe, expect, it } from 'vitest';
import { adoptCaBundle, splitPemCertificates } from '../../src/agent/identity.js';
import { spkiPinOf } from '../../src/contract/ca-pin.js';
import { createThrowawayCa } from '../../src/server/ca.js';

/** The agent's rule for a CA bundle the server hands out during a CA rotation (docs/AGENT.md, "CA rotation"). */
describe('adoptCaBundle', async () => {
  const oldCa = await createThrowawayCa();
  const nextCa = await createThrowawayCa();
  const strangerCa = await createThrowawayCa();
  const ownOnOld = await oldCa.issueClient('n1');
  const ownOnNext = await nextCa.issueClient('n1');
  const current = { caPins: [oldCa.ca.pin], caPem: oldCa.ca.certPem };

  it('adds the next CA when the bundle holds a pinned one: ca.pem is the bundle, the pins are its CAs', () => {
    const trust = adoptCaBundle(current, [oldCa.ca.certPem, nextCa.ca.certPem], ownOnOld.certPem);
    expect(trust).not.toBeNull();
    expect(trust!.caPins).toEqual([oldCa.ca.pin, nextCa.ca.pin]);
    expect(splitPemCertificates(trust!.caPem).map((pem) => spkiPinOf(pem))).toEqual([oldCa.ca.pin, nextCa.ca.pin]);
  });

  it('ignores a bundle without any pinned CA, or with a certificate that is not a CA', () => {
    expect(adoptCaBundle(current, [strangerCa.ca.certPem], ownOnOld.certPem)).toBeNull();
    expect(adoptCaBundle(current, [oldCa.ca.certPem, ownOnNext.certPem], ownOnOld.certPem)).toBeNull();
    expect(adoptCaBundle(current, ['not a certificate'], ownOnOld.certPem)).toBeNull();
    expect(adoptCaBundle(current, undefined, ownOnOld.certPem)).toBeNull();
  });

  it('returns null for the bundle it already has', () => {
    expect(adoptCaBundle(current, [oldCa.ca.certPem], ownOnOld.certPem)).toBeNull();
  });

  it('after retire: drops the old CA, but keeps the CA of its own certificate if the bundle lacks it', () => {
    const both = { caPins: [oldCa.ca.pin, nextCa.ca.pin], caPem: oldCa.ca.certPem + nextCa.ca.certPem };
    expect(adoptCaBundle(both, [nextCa.ca.certPem], ownOnNext.certPem)).toEqual({ caPins: [nextCa.ca.pin], caPem: nextCa.ca.cert.toString() });
    const stranded = adoptCaBundle(both, [nextCa.ca.certPem], ownOnOld.certPem);
    expect(stranded!.caPins).toEqual([nextCa.ca.pin, oldCa.ca.pin]);
  });
});
