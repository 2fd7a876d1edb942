/**
 * The planner of encrypted networks' IPsec state: kernel dumps in, ordered steps out. The
 * tables are plain data here (what a dump returns); the same steps against a real kernel run in
 * test/integration/encryption-qemu.test.ts.
 */
import assert from 'node:assert/strict';
import * as crypto from 'node:crypto';
import { describe, test } from 'node:test';
import {
  ESP_REQID,
  type EspPeer,
  type EspSelf,
  type EspStep,
  type KernelEsp,
  describeStep,
  hostPolicies,
  plan,
  planRemoveAll,
} from '../../src/crypto/esp';
import { derivePairKeys } from '../../src/crypto/derive';
import { encodePublicKey, hostKeyFromRaw } from '../../src/crypto/host-key';
import type { ParsedPolicy, ParsedSa } from '../../src/dataplane/xfrm';

const PORT = 4793;

function host(name: string, vtep: string): { self: EspSelf; peer: EspPeer } {
  const key = hostKeyFromRaw(crypto.createHash('sha256').update(name).digest());
  const identity = { name, instance: `${name}-i`, publicKey: key.publicText };
  return { self: { identity, key, vtep }, peer: { identity, vtep } };
}

const h1 = host('h1', '10.0.0.1');
const h2 = host('h2', '10.0.0.2');
const h3 = host('h3', '10.0.0.3');

/** The tables after the kernel ran `steps` (what a dump would then return). */
function run(k: KernelEsp, steps: EspStep[]): KernelEsp {
  let sas = [...k.sas];
  let policies = [...k.policies];
  for (const s of steps) {
    if (s.kind === 'add-sa') {
      assert.ok(!sas.some((x) => x.dst === s.sa.dst && x.spi === s.sa.spi && x.key.equals(s.sa.key)), 'adds an SA that exists');
      sas = sas.filter((x) => !(x.dst === s.sa.dst && x.spi === s.sa.spi));
      sas.push({ ...s.sa, proto: 50, mode: 0, family: 2, replayWindow: 32, aead: { name: 'rfc4106(gcm(aes))', icvBits: 128 } });
    } else if (s.kind === 'del-sa') {
      const before = sas.length;
      sas = sas.filter((x) => !(x.src === s.id.src && x.dst === s.id.dst && x.spi === s.id.spi));
      assert.equal(sas.length, before - 1, `deletes an SA that is not there: ${describeStep(s)}`);
    } else if (s.kind === 'set-policy') {
      const same = (p: ParsedPolicy): boolean => p.dir === s.policy.dir && JSON.stringify(p.selector) === JSON.stringify(s.policy.selector);
      const old = policies.find(same);
      policies = policies.filter((p) => !same(p));
      policies.push({ ...s.policy, index: old?.index ?? policies.length + 1 });
    } else {
      const before = policies.length;
      policies = policies.filter((p) => !(p.dir === s.dir && JSON.stringify(p.selector) === JSON.stringify(s.selector)));
      assert.equal(policies.length, before - 1, 'deletes a policy that is not there');
    }
  }
  return { sas, policies };
}

const kinds = (steps: EspStep[]): string[] => steps.map((s) => `${s.kind} ${s.why}`);
const EMPTY: KernelEsp = { sas: [], policies: [] };

describe('encrypted networks: IPsec plan', () => {
  test('from nothing: host-wide policies, then per peer receive SAs, send SA, policy; then nothing to do', () => {
    const { steps, errors } = plan(EMPTY, h1.self, [h2.peer, h3.peer], 0, PORT);
    assert.deepEqual(errors, []);
    assert.deepEqual(kinds(steps), [
      'set-policy host-wide in policy for UDP 4793',
      'set-policy host-wide out policy for UDP 4793',
      'add-sa receive SA from h2 (10.0.0.2), epoch 0',
      'add-sa receive SA from h2 (10.0.0.2), epoch 1',
      'add-sa send SA to h2 (10.0.0.2), epoch 0',
      'set-policy send to h2 (10.0.0.2) with epoch 0',
      'add-sa receive SA from h3 (10.0.0.3), epoch 0',
      'add-sa receive SA from h3 (10.0.0.3), epoch 1',
      'add-sa send SA to h3 (10.0.0.3), epoch 0',
      'set-policy send to h3 (10.0.0.3) with epoch 0',
    ]);
    const k = run(EMPTY, steps);
    assert.equal(k.sas.length, 6);
    assert.equal(k.policies.length, 4);
    assert.deepEqual(plan(k, h1.self, [h2.peer, h3.peer], 0, PORT).steps, []);
  });

  test('what one host sends the other receives: same SPI and key on both sides', () => {
    const a = run(EMPTY, plan(EMPTY, h1.self, [h2.peer], 3, PORT).steps);
    const b = run(EMPTY, plan(EMPTY, h2.self, [h1.peer], 3, PORT).steps);
    const aSend = a.sas.find((s) => s.src === h1.self.vtep)!;
    const bRecv = b.sas.find((s) => s.src === h1.self.vtep && s.spi === aSend.spi);
    assert.ok(bRecv, 'h2 has a receive SA for the SPI h1 sends with');
    assert.deepEqual(bRecv.key, aSend.key);
    const pol = a.policies.find((p) => p.dir === 'out' && p.action === 'allow')!;
    assert.equal(pol.tmpls[0]!.spi, aSend.spi);
    assert.equal(aSend.spi, derivePairKeys({ identity: h1.self.identity, key: h1.self.key }, h2.peer.identity, 3).out.spi);
  });

  test('rotation: add the new receive and send SAs, switch the policy, then remove the old ones', () => {
    let k = run(EMPTY, plan(EMPTY, h1.self, [h2.peer], 1, PORT).steps);
    const { steps } = plan(k, h1.self, [h2.peer], 2, PORT);
    assert.deepEqual(kinds(steps), [
      'add-sa receive SA from h2 (10.0.0.2), epoch 3',
      'add-sa send SA to h2 (10.0.0.2), epoch 2',
      'set-policy send to h2 (10.0.0.2) with epoch 2',
      'del-sa old send SA to h2 (10.0.0.2), epoch 1',
      'del-sa old receive SA from h2 (10.0.0.2), epoch 0',
    ]);
    k = run(k, steps);
    assert.deepEqual(plan(k, h1.self, [h2.peer], 2, PORT).steps, []);
  });

  test('a peer that left: its policy first, then its send SA, then its receive SAs; others untouched', () => {
    const k = run(EMPTY, plan(EMPTY, h1.self, [h2.peer, h3.peer], 5, PORT).steps);
    const { steps } = plan(k, h1.self, [h2.peer], 5, PORT);
    assert.deepEqual(
      steps.map((s) => s.kind),
      ['del-policy', 'del-sa', 'del-sa', 'del-sa', 'del-sa'],
    );
    const sendFirst = steps[1]!;
    assert.ok(sendFirst.kind === 'del-sa' && sendFirst.id.src === h1.self.vtep && sendFirst.id.dst === h3.self.vtep);
    for (const s of steps.slice(2)) assert.ok(s.kind === 'del-sa' && s.id.src === h3.self.vtep);
    assert.deepEqual(plan(run(k, steps), h1.self, [h2.peer], 5, PORT).steps, []);
  });

  test('drift: an SA with the right SPI but a wrong key is replaced, not deleted after', () => {
    const k = run(EMPTY, plan(EMPTY, h1.self, [h2.peer], 0, PORT).steps);
    const tampered: KernelEsp = { ...k, sas: k.sas.map((s, i) => (i === 0 ? { ...s, key: Buffer.alloc(20, 7) } : s)) };
    const { steps } = plan(tampered, h1.self, [h2.peer], 0, PORT);
    assert.equal(steps.length, 1);
    assert.equal(steps[0]!.kind, 'add-sa');
    assert.deepEqual(plan(run(tampered, steps), h1.self, [h2.peer], 0, PORT).steps, []);
  });

  test('a policy pointing at no SA of the ring is rewritten; a deleted host policy is restored', () => {
    const k = run(EMPTY, plan(EMPTY, h1.self, [h2.peer], 0, PORT).steps);
    const drift: KernelEsp = {
      sas: k.sas,
      policies: k.policies
        .filter((p) => p.action !== 'block')
        .map((p) => (p.priority === 100 ? { ...p, tmpls: [{ ...p.tmpls[0]!, spi: 0xdeadbeef }] } : p)),
    };
    assert.deepEqual(kinds(plan(drift, h1.self, [h2.peer], 0, PORT).steps), [
      'set-policy host-wide out policy for UDP 4793',
      'set-policy send to h2 (10.0.0.2) with epoch 0',
    ]);
  });

  test("someone else's SAs and policies are left alone", () => {
    const foreignSa: ParsedSa = {
      src: '10.0.0.1',
      dst: '10.0.0.2',
      spi: 0x1000,
      reqid: 7,
      key: Buffer.alloc(20),
      proto: 50,
      mode: 0,
      family: 2,
    };
    const foreignPolicy: ParsedPolicy = {
      dir: 'out',
      selector: { src: '0.0.0.0', srcPrefix: 0, dst: '0.0.0.0', dstPrefix: 0, proto: 17, dport: 4789 },
      priority: 5,
      action: 'block',
      tmpls: [],
      index: 99,
    };
    const k = run(EMPTY, plan(EMPTY, h1.self, [h2.peer], 0, PORT).steps);
    const withForeign = { sas: [...k.sas, foreignSa], policies: [...k.policies, foreignPolicy] };
    assert.deepEqual(plan(withForeign, h1.self, [h2.peer], 0, PORT).steps, []);
    const off = planRemoveAll(withForeign, PORT);
    assert.ok(off.every((s) => (s.kind === "del-sa" ? s.id.spi !== 0x1000 : s.kind === "del-policy" && s.selector.dport === PORT)));
    assert.equal(off.length, k.sas.length + k.policies.length);
    // Per-peer policy, host-wide in, host-wide block last; then the SAs.
    assert.deepEqual(
      off.map((s) => (s.kind === 'del-policy' ? `${s.dir}` : 'sa')),
      ['out', 'in', 'out', 'sa', 'sa', 'sa'],
    );
  });

  test('a peer with an unusable public key is reported and skipped; the others are programmed', () => {
    const bad: EspPeer = { identity: { name: 'bad', instance: 'x', publicKey: encodePublicKey(Buffer.alloc(32)) }, vtep: '10.0.0.9' };
    const { steps, errors } = plan(EMPTY, h1.self, [bad, h2.peer], 0, PORT);
    assert.equal(errors.length, 1);
    assert.match(errors[0]!, /bad \(10\.0\.0\.9\)/);
    assert.ok(steps.some((s) => s.kind === 'add-sa' && s.sa.dst === h2.self.vtep));
    assert.ok(!steps.some((s) => s.kind === 'add-sa' && (s.sa.dst === '10.0.0.9' || s.sa.src === '10.0.0.9')));
  });

  test('host-wide policies: cleartext in is refused (ESP template, our reqid), out without a peer SA is blocked', () => {
    const [inPol, outPol] = hostPolicies(PORT);
    assert.deepEqual(inPol!.tmpls, [{ src: '0.0.0.0', dst: '0.0.0.0', spi: 0, reqid: ESP_REQID }]);
    assert.equal(outPol!.action, 'block');
    assert.ok(outPol!.priority > 100, 'per-peer policies win over the block');
  });
});
