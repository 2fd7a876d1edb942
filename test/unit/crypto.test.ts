/** Host keys, per-pair key and SPI derivation, and the key ring: pure, with fixed vectors. */
import assert from 'node:assert/strict';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { describe, test } from 'node:test';
import {
  type HostIdentity,
  derivePairKeys,
  directionKey,
  sharedSecret,
  spiEpochBits,
  spiFor,
} from '../../src/crypto/derive';
import {
  HOST_KEY_FILE,
  HostKeyError,
  decodePublicKey,
  encodePublicKey,
  hostKeyFromRaw,
  loadOrCreateHostKey,
} from '../../src/crypto/host-key';
import {
  EMPTY_PEER_STATE,
  type PeerSaState,
  type RingOp,
  nextRotationAt,
  planPeer,
  ringEpochs,
  rotated,
  rotationBlockers,
  rotationDue,
} from '../../src/crypto/ring';

// RFC 7748 section 6.1: Alice's and Bob's X25519 keys and their shared secret.
const ALICE_PRIVATE = '77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a';
const ALICE_PUBLIC = '8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a';
const BOB_PRIVATE = '5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb';
const BOB_PUBLIC = 'de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f';
const SHARED = '4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742';

const alice = hostKeyFromRaw(Buffer.from(ALICE_PRIVATE, 'hex'));
const bob = hostKeyFromRaw(Buffer.from(BOB_PRIVATE, 'hex'));
const idA: HostIdentity = { name: 'node1', instance: 'i-aaaa', publicKey: alice.publicText };
const idB: HostIdentity = { name: 'node2', instance: 'i-bbbb', publicKey: bob.publicText };

/** HKDF-SHA256 written from RFC 5869 with HMAC only: an independent check of the derivation. */
function rfc5869(ikm: Buffer, salt: Buffer, info: Buffer, len: number): Buffer {
  const prk = crypto.createHmac('sha256', salt).update(ikm).digest();
  const out: Buffer[] = [];
  let t = Buffer.alloc(0);
  for (let i = 1; out.length * 32 < len; i++) {
    t = crypto.createHmac('sha256', prk).update(Buffer.concat([t, info, Buffer.from([i])])).digest();
    out.push(t);
  }
  return Buffer.concat(out).subarray(0, len);
}

function lp(s: string): Buffer {
  const b = Buffer.from(s, 'utf8');
  return Buffer.concat([Buffer.from([b.length >> 8, b.length & 255]), b]);
}

describe('host key', () => {
  test('RFC 7748 vectors: public keys and the shared secret', () => {
    assert.equal(alice.publicRaw.toString('hex'), ALICE_PUBLIC);
    assert.equal(bob.publicRaw.toString('hex'), BOB_PUBLIC);
    assert.equal(sharedSecret(alice, bob.publicText).toString('hex'), SHARED);
    assert.equal(sharedSecret(bob, alice.publicText).toString('hex'), SHARED);
  });

  test('public key text round-trips and rejects anything else', () => {
    assert.equal(alice.publicText, 'x25519:hSDwCYkwp1R0i33ctD73Wg2_Og0mOBr066SpjqqbTmo');
    assert.deepEqual(decodePublicKey(alice.publicText).raw, alice.publicRaw);
    assert.equal(encodePublicKey(alice.publicRaw), alice.publicText);
    for (const bad of ['', 'x25519:', 'ed25519:hSDwCYkwp1R0i33ctD73Wg2_Og0mOBr066SpjqqbTmo', 'x25519:AAAA', `x25519:${'A'.repeat(44)}`, 'x25519:hSDwCYkwp1R0i33ctD73Wg2_Og0mOBr066SpjqqbTm+']) {
      assert.throws(() => decodePublicKey(bad), HostKeyError, bad);
    }
  });

  test('a low-order public key gives no shared secret', () => {
    const zero = encodePublicKey(Buffer.alloc(32));
    assert.throws(() => sharedSecret(alice, zero), HostKeyError);
  });

  test('made at first start with mode 0600, the same key afterwards', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tso-key-'));
    try {
      const state = path.join(dir, 'state');
      const k1 = loadOrCreateHostKey(state);
      const file = path.join(state, HOST_KEY_FILE);
      assert.equal(fs.statSync(file).mode & 0o777, 0o600);
      assert.equal(k1.file, file);
      const k2 = loadOrCreateHostKey(state);
      assert.equal(k2.publicText, k1.publicText);
      assert.deepEqual(fs.readdirSync(state), [HOST_KEY_FILE], 'no temporary file left');
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  test('a key file others can read, or a symlink, is refused', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tso-key-'));
    try {
      loadOrCreateHostKey(dir);
      const file = path.join(dir, HOST_KEY_FILE);
      fs.chmodSync(file, 0o644);
      assert.throws(() => loadOrCreateHostKey(dir), /readable by group or others/);
      fs.chmodSync(file, 0o600);
      const other = path.join(dir, 'link');
      fs.mkdirSync(other);
      fs.symlinkSync(file, path.join(other, HOST_KEY_FILE));
      assert.throws(() => loadOrCreateHostKey(other), /symbolic link/);
      const g = path.join(dir, 'g');
      fs.mkdirSync(g);
      fs.writeFileSync(path.join(g, HOST_KEY_FILE), 'not a key', { mode: 0o600 });
      assert.throws(() => loadOrCreateHostKey(g), /not a readable private key/);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('pair keys', () => {
  test('both hosts derive the same key for each direction', () => {
    for (const epoch of [0, 1, 7, 2 ** 40]) {
      const a = derivePairKeys({ identity: idA, key: alice }, idB, epoch);
      const b = derivePairKeys({ identity: idB, key: bob }, idA, epoch);
      assert.deepEqual(a.out, b.in);
      assert.deepEqual(a.in, b.out);
    }
  });

  test('fixed vectors (epochs 0–2, node1 with Alice’s key → node2 with Bob’s)', () => {
    const expected = [
      ['1f69dad0', '1ded06d2864464e134a2eb8038f4173a394f1e31', '3f69dad0', 'de6996c35762e834fda07ca3dd1bf11f7bda3f3b'],
      ['5f69dad0', 'e07aa8f68b3e92e251b64ede70c86b2040a1ddd8', '7f69dad0', '4820497f3ad189a98f836670411691ab16ab0ec4'],
      ['9f69dad0', '06c317956ce938b5f7660bed4c28251b2409fe8e', 'bf69dad0', '2d8f8fb8fb2200fdf75ce3244a99935736328e3c'],
    ];
    expected.forEach(([outSpi, outKey, inSpi, inKey], epoch) => {
      const k = derivePairKeys({ identity: idA, key: alice }, idB, epoch);
      assert.equal(k.out.spi.toString(16), outSpi);
      assert.equal(k.out.key.toString('hex'), outKey);
      assert.equal(k.in.spi.toString(16), inSpi);
      assert.equal(k.in.key.toString('hex'), inKey);
    });
  });

  test('the key is HKDF-SHA256 (RFC 5869) over the shared secret, bound to both identities and the epoch', () => {
    const ident = (h: HostIdentity, raw: Buffer): Buffer => Buffer.concat([lp(h.name), lp(h.instance), raw]);
    const epoch = Buffer.alloc(8);
    epoch.writeBigUInt64BE(5n);
    const info = Buffer.concat([Buffer.from('tsoverlay/esp/rfc4106-128'), ident(idA, alice.publicRaw), ident(idB, bob.publicRaw), epoch]);
    const want = rfc5869(Buffer.from(SHARED, 'hex'), Buffer.from('tsoverlay esp key v1'), info, 20);
    assert.deepEqual(directionKey(Buffer.from(SHARED, 'hex'), idA, idB, 5), want);
  });

  test('different pairs, directions, epochs and identities give different keys', () => {
    const carol = hostKeyFromRaw(crypto.createHash('sha256').update('carol').digest());
    const idC: HostIdentity = { name: 'node3', instance: 'i-cccc', publicKey: carol.publicText };
    const keys = new Set<string>();
    const add = (b: Buffer): void => {
      const h = b.toString('hex');
      assert.ok(!keys.has(h), 'a key repeated');
      keys.add(h);
    };
    for (const epoch of [0, 1, 2, 3]) {
      for (const [self, key, peer] of [
        [idA, alice, idB],
        [idA, alice, idC],
        [idB, bob, idC],
      ] as const) {
        const k = derivePairKeys({ identity: self, key }, peer, epoch);
        add(k.out.key);
        add(k.in.key);
      }
    }
    // The same key pair under another name or instance is another identity.
    const renamed = derivePairKeys({ identity: { ...idA, instance: 'i-other' }, key: alice }, idB, 0);
    add(renamed.out.key);
    add(derivePairKeys({ identity: idA, key: alice }, { ...idB, name: 'node9' }, 0).out.key);
  });

  test('an identity that does not carry its own public key is refused', () => {
    assert.throws(() => derivePairKeys({ identity: { ...idA, publicKey: bob.publicText }, key: alice }, idB, 0), HostKeyError);
  });
});

describe('SPIs', () => {
  test('never 0 nor in the reserved range 1–255; distinct per direction and epoch within a ring', () => {
    for (let i = 0; i < 200; i++) {
      const k = hostKeyFromRaw(crypto.createHash('sha256').update(`h${i}`).digest());
      const id: HostIdentity = { name: `h${i}`, instance: `${i}`, publicKey: k.publicText };
      const seen = new Set<number>();
      for (const epoch of [i, i + 1, i + 2]) {
        for (const spi of [spiFor(id, idA, epoch), spiFor(idA, id, epoch)]) {
          assert.ok(spi >= 256 && spi <= 0xffffffff, `spi ${spi}`);
          assert.ok(!seen.has(spi), 'SPI repeated within a ring');
          seen.add(spi);
          assert.equal(spiEpochBits(spi), epoch % 4);
        }
      }
    }
  });

  test('both ends compute the same SPI; a host has none towards itself', () => {
    const a = derivePairKeys({ identity: idA, key: alice }, idB, 3);
    assert.equal(a.out.spi, spiFor(idA, idB, 3));
    assert.equal(a.in.spi, spiFor(idB, idA, 3));
    assert.throws(() => spiFor(idA, idA, 0), /itself/);
    assert.throws(() => spiFor(idA, idB, -1), /epoch/);
  });
});

describe('key ring', () => {
  const state = (rx: number[], tx: number[], policy?: number): PeerSaState => ({ rx: new Set(rx), tx: new Set(tx), policy });

  test('receive on P-1, P, P+1; send on P', () => {
    assert.deepEqual(ringEpochs(0), { rx: [0, 1], tx: 0 });
    assert.deepEqual(ringEpochs(5), { rx: [4, 5, 6], tx: 5 });
    assert.throws(() => ringEpochs(-1));
  });

  test('a new peer: receive SAs, then the send SA, then the policy', () => {
    assert.deepEqual(planPeer(EMPTY_PEER_STATE, 1), [
      { kind: 'add-rx', epoch: 0 },
      { kind: 'add-rx', epoch: 1 },
      { kind: 'add-rx', epoch: 2 },
      { kind: 'add-tx', epoch: 1 },
      { kind: 'set-policy', epoch: 1 },
    ]);
  });

  test("a rotation step is Docker's make-before-break sequence", () => {
    // Docker: -rSA0, +rSA3, +fSA2, +fSP2/-fSP1, -fSA1 (here the stale receive SA goes last).
    const ops = planPeer(state([0, 1, 2], [1], 1), 2);
    const want: RingOp[] = [
      { kind: 'add-rx', epoch: 3 },
      { kind: 'add-tx', epoch: 2 },
      { kind: 'set-policy', epoch: 2 },
      { kind: 'del-tx', epoch: 1 },
      { kind: 'del-rx', epoch: 0 },
    ];
    assert.deepEqual(ops, want);
    assert.deepEqual(planPeer(state([1, 2, 3], [2], 2), 2), [], 'nothing to do once done');
  });

  test('drift is repaired: a missing send SA, a stale policy, extra SAs', () => {
    assert.deepEqual(planPeer(state([4, 5, 6], [], 5), 5), [{ kind: 'add-tx', epoch: 5 }]);
    assert.deepEqual(planPeer(state([4, 5, 6, 9], [5, 8], 8), 5), [
      { kind: 'set-policy', epoch: 5 },
      { kind: 'del-tx', epoch: 8 },
      { kind: 'del-rx', epoch: 9 },
    ]);
  });

  test('any two hosts one step apart still read each other', () => {
    for (const p of [0, 1, 10]) {
      const behind = ringEpochs(p);
      const ahead = ringEpochs(p + 1);
      assert.ok(ahead.rx.includes(behind.tx), 'the host ahead receives what the one behind sends');
      assert.ok(behind.rx.includes(ahead.tx), 'the host behind receives what the one ahead sends');
    }
  });

  test('schedule: due after the interval; blocked while a host has not applied the current epoch', () => {
    const rec = { epoch: 3, rotated: '2026-01-01T00:00:00.000Z' };
    assert.equal(nextRotationAt(rec, 12 * 3600).toISOString(), '2026-01-01T12:00:00.000Z');
    assert.equal(rotationDue(rec, new Date('2026-01-01T11:59:59Z'), 12 * 3600), false);
    assert.equal(rotationDue(rec, new Date('2026-01-01T12:00:00Z'), 12 * 3600), true);
    assert.deepEqual(rotationBlockers(rec, new Map([['a', 3], ['b', 2], ['c', undefined]])), ['b', 'c']);
    assert.deepEqual(rotationBlockers(rec, new Map([['a', 3]])), []);
    assert.deepEqual(rotated(rec, new Date('2026-01-02T00:00:00Z'), 'cli'), { epoch: 4, rotated: '2026-01-02T00:00:00.000Z', by: 'cli' });
  });
});
