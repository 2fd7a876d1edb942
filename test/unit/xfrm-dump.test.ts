/**
 * Parsing what a real kernel returns: XFRM_MSG_GETSA / GETPOLICY dump messages captured in the
 * qemu VM (Debian 6.1 kernel) from host h2 of test/integration/encryption-qemu.test.ts after two
 * rotations (primary epoch 2), with the attributes the kernel adds (lifetimes, statistics,
 * replay state) that we never send.
 */
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';
import { ESP_REQID, isOurPolicy, isOurSa } from '../../src/crypto/esp';
import { spiEpochBits } from '../../src/crypto/derive';
import { XFRM_MSG_NEWPOLICY, XFRM_MSG_NEWSA, parsePolicy, parseSa } from '../../src/dataplane/xfrm';

interface Dump {
  sa: Array<{ type: number; hex: string }>;
  policy: Array<{ type: number; hex: string }>;
}

const dump = JSON.parse(fs.readFileSync(path.resolve(__dirname, '../../../test/fixtures/xfrm-dump-vm.json'), 'utf8')) as Dump;
const H1 = '10.99.0.1';
const H2 = '10.99.0.2';

test('SAs dumped by the kernel: h2 receives epochs 1–3 from h1 and sends epoch 2', () => {
  assert.ok(dump.sa.every((m) => m.type === XFRM_MSG_NEWSA));
  const sas = dump.sa.map((m) => parseSa(Buffer.from(m.hex, 'hex')));
  assert.equal(sas.length, 4);
  for (const sa of sas) {
    assert.ok(isOurSa(sa));
    assert.equal(sa.reqid, ESP_REQID);
    assert.equal(sa.mode, 0, 'transport');
    assert.equal(sa.family, 2);
    assert.equal(sa.replayWindow, 32);
    assert.deepEqual(sa.aead, { name: 'rfc4106(gcm(aes))', icvBits: 128 });
    assert.equal(sa.key.length, 20);
    assert.deepEqual(sa.selector, { src: sa.src, srcPrefix: 32, dst: sa.dst, dstPrefix: 32, proto: 17, dport: 4793 });
    assert.ok(sa.spi >= 256);
  }
  const rx = sas.filter((s) => s.src === H1 && s.dst === H2);
  const tx = sas.filter((s) => s.src === H2 && s.dst === H1);
  assert.deepEqual(rx.map((s) => spiEpochBits(s.spi)).sort(), [1, 2, 3]);
  assert.deepEqual(tx.map((s) => spiEpochBits(s.spi)), [2]);
  // The same pair: the SPIs differ only in the epoch and direction bits.
  const low = new Set(sas.map((s) => s.spi & 0x1fffffff));
  assert.equal(low.size, 1);
  assert.notEqual(rx[0]!.spi & 0x20000000, tx[0]!.spi & 0x20000000);
});

test('policies dumped by the kernel: the peer out policy names the send SA; host-wide in and block', () => {
  assert.ok(dump.policy.every((m) => m.type === XFRM_MSG_NEWPOLICY));
  const pols = dump.policy.map((m) => parsePolicy(Buffer.from(m.hex, 'hex')));
  assert.equal(pols.length, 3);
  assert.ok(pols.every((p) => isOurPolicy(p, 4793)));
  const sendSpi = dump.sa.map((m) => parseSa(Buffer.from(m.hex, 'hex'))).find((s) => s.src === H2)!.spi;
  const byKind = Object.fromEntries(pols.map((p) => [`${p.dir}/${p.action}/${p.priority}`, p]));
  assert.deepEqual(Object.keys(byKind).sort(), ['in/allow/200', 'out/allow/100', 'out/block/200']);
  assert.deepEqual(byKind['out/allow/100']!.tmpls, [{ src: H2, dst: H1, spi: sendSpi, reqid: ESP_REQID }]);
  assert.deepEqual(byKind['out/allow/100']!.selector, { src: H2, srcPrefix: 32, dst: H1, dstPrefix: 32, proto: 17, dport: 4793 });
  assert.deepEqual(byKind['in/allow/200']!.tmpls, [{ src: '0.0.0.0', dst: '0.0.0.0', spi: 0, reqid: ESP_REQID }]);
  assert.deepEqual(byKind['out/block/200']!.tmpls, []);
  assert.ok(pols.every((p) => p.index > 0), 'the kernel numbers its policies');
});
