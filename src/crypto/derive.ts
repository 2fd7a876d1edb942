/**
 * Per-pair ESP keys and SPIs, derived by each host on its own.
 *
 * Two hosts A and B share an X25519 secret (A's private key with B's public key gives the same
 * 32 bytes as B's private key with A's public key). From it, HKDF-SHA256 derives one key per
 * direction and key epoch, bound to both hosts' identities (name, instance id, public key): the
 * key A uses to send to B is the key B uses to receive from A, and no other pair, direction or
 * epoch gets the same key. Nothing secret is ever exchanged or stored.
 *
 * SPIs are public (they travel in every ESP header), so they are derived from public data only:
 * the pair, the direction and the epoch. Their layout makes the SPIs of one pair distinct by
 * construction within a key ring (see spiFor).
 */
import * as crypto from 'node:crypto';
import { HostKeyError, type HostKeyPair, decodePublicKey } from './host-key';

/** rfc4106(gcm(aes)) with a 128-bit key: 16 key bytes followed by the 4-byte salt. */
export const AEAD_KEY_BYTES = 20;

/** One host as the key derivation sees it: the identity in its host record. */
export interface HostIdentity {
  name: string;
  /** The host's instance id (from its host record). */
  instance: string;
  /** Public key text as in the host record (`x25519:…`). */
  publicKey: string;
}

/** The key material of one direction of a pair in one epoch. */
export interface DirectionKeys {
  spi: number;
  /** AEAD key: 16 bytes of AES-128 key then the 4-byte GCM salt. */
  key: Buffer;
}

export interface PairKeys {
  /** Keys for what this host sends to the peer. */
  out: DirectionKeys;
  /** Keys for what this host receives from the peer. */
  in: DirectionKeys;
}

const KEY_SALT = Buffer.from('tsoverlay esp key v1');
const MAX_EPOCH = 2 ** 48;

function lengthPrefixed(s: string): Buffer {
  const b = Buffer.from(s, 'utf8');
  if (b.length > 0xffff) throw new Error('identity field too long');
  const len = Buffer.alloc(2);
  len.writeUInt16BE(b.length, 0);
  return Buffer.concat([len, b]);
}

function identityBytes(h: HostIdentity): Buffer {
  return Buffer.concat([lengthPrefixed(h.name), lengthPrefixed(h.instance), decodePublicKey(h.publicKey).raw]);
}

function epochBytes(epoch: number): Buffer {
  if (!Number.isSafeInteger(epoch) || epoch < 0 || epoch >= MAX_EPOCH) throw new Error(`invalid key epoch ${epoch}`);
  const b = Buffer.alloc(8);
  b.writeBigUInt64BE(BigInt(epoch), 0);
  return b;
}

/** Total order on identities, the same on both hosts of a pair. */
export function compareIdentities(a: HostIdentity, b: HostIdentity): number {
  return Buffer.compare(identityBytes(a), identityBytes(b));
}

/**
 * The X25519 shared secret of this host's private key and a peer's public key. Throws for a
 * public key that yields no secret (a low-order point: someone wrote a bogus key to the store).
 */
export function sharedSecret(self: HostKeyPair, peerPublicKey: string): Buffer {
  const { key } = decodePublicKey(peerPublicKey);
  let secret: Buffer;
  try {
    secret = crypto.diffieHellman({ privateKey: self.privateKey, publicKey: key });
  } catch (e) {
    throw new HostKeyError(`public key ${peerPublicKey} gives no shared secret: ${(e as Error).message}`);
  }
  if (secret.every((x) => x === 0)) throw new HostKeyError(`public key ${peerPublicKey} gives an all-zero shared secret`);
  return secret;
}

/** The AEAD key for traffic from `sender` to `receiver` in `epoch`, given their shared secret. */
export function directionKey(secret: Buffer, sender: HostIdentity, receiver: HostIdentity, epoch: number): Buffer {
  const info = Buffer.concat([Buffer.from('tsoverlay/esp/rfc4106-128'), identityBytes(sender), identityBytes(receiver), epochBytes(epoch)]);
  return Buffer.from(crypto.hkdfSync('sha256', secret, KEY_SALT, info, AEAD_KEY_BYTES));
}

/**
 * The SPI of traffic from `sender` to `receiver` in `epoch`:
 *
 *   bits 31–30  epoch mod 4     (the ring holds at most three consecutive epochs)
 *   bit  29     direction       (0 when the sender orders before the receiver)
 *   bit  28     always 1        (so the SPI is never 0 nor in the reserved range 1–255)
 *   bits 27–0   hash of the unordered pair
 *
 * So within one ring the SPIs of a pair never collide across epochs or directions. Different
 * pairs arriving at the same receiver can collide only through the 28-bit hash.
 */
export function spiFor(sender: HostIdentity, receiver: HostIdentity, epoch: number): number {
  epochBytes(epoch);
  const a = identityBytes(sender);
  const b = identityBytes(receiver);
  const order = Buffer.compare(a, b);
  if (order === 0) throw new Error('a host has no SPI towards itself');
  const [lo, hi] = order < 0 ? [a, b] : [b, a];
  const h = crypto
    .createHash('sha256')
    .update('tsoverlay/esp/spi/v1')
    .update(lengthPrefixed(lo.toString('base64')))
    .update(lengthPrefixed(hi.toString('base64')))
    .digest();
  const hash28 = h.readUInt32BE(0) & 0x0fffffff;
  const dir = order < 0 ? 0 : 1;
  return (((epoch % 4) << 30) | (dir << 29) | (1 << 28) | hash28) >>> 0;
}

/** The epoch bits of an SPI made by spiFor (epoch mod 4). */
export function spiEpochBits(spi: number): number {
  return (spi >>> 30) & 3;
}

/** Both directions of the pair (self, peer) in one epoch, as this host programs them. */
export function derivePairKeys(
  self: { identity: HostIdentity; key: HostKeyPair },
  peer: HostIdentity,
  epoch: number,
  secret: Buffer = sharedSecret(self.key, peer.publicKey),
): PairKeys {
  if (self.identity.publicKey !== self.key.publicText) {
    throw new HostKeyError("this host's identity does not carry its own public key");
  }
  return {
    out: { spi: spiFor(self.identity, peer, epoch), key: directionKey(secret, self.identity, peer, epoch) },
    in: { spi: spiFor(peer, self.identity, epoch), key: directionKey(secret, peer, self.identity, epoch) },
  };
}
