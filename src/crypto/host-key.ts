/**
 * The host's own X25519 key pair for encrypted networks.
 *
 * The private key never leaves this host: it is made at first start, kept in a file readable
 * by root only under the state directory, and never written to the store. Only the public key
 * goes into the host's record, from which every other host derives the keys of its pair.
 */
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';

export const HOST_KEY_FILE = 'host-key.pem';
export const PUBLIC_KEY_LENGTH = 32;

/** Public key as published in the host record: `x25519:` + the raw 32 bytes in base64url. */
const PUBLIC_KEY_PREFIX = 'x25519:';

export interface HostKeyPair {
  privateKey: crypto.KeyObject;
  publicKey: crypto.KeyObject;
  /** The raw 32-byte public key. */
  publicRaw: Buffer;
  /** The text form kept in the host record. */
  publicText: string;
  /** Where the private key lives. */
  file: string;
}

export class HostKeyError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'HostKeyError';
  }
}

function rawPublic(pub: crypto.KeyObject): Buffer {
  // The JWK form of an OKP key carries the raw public key as `x` (base64url).
  const jwk = pub.export({ format: 'jwk' });
  if (jwk.kty !== 'OKP' || jwk.crv !== 'X25519' || typeof jwk.x !== 'string') {
    throw new HostKeyError('host key is not an X25519 key');
  }
  const raw = Buffer.from(jwk.x, 'base64url');
  if (raw.length !== PUBLIC_KEY_LENGTH) throw new HostKeyError('host key has a malformed public part');
  return raw;
}

function pairFromPrivate(privateKey: crypto.KeyObject, file: string): HostKeyPair {
  if (privateKey.type !== 'private' || privateKey.asymmetricKeyType !== 'x25519') {
    throw new HostKeyError(`${file} does not hold an X25519 private key`);
  }
  const publicKey = crypto.createPublicKey(privateKey);
  const publicRaw = rawPublic(publicKey);
  return { privateKey, publicKey, publicRaw, publicText: encodePublicKey(publicRaw), file };
}

/** A private key in PKCS#8 PEM → the pair (for tests and for loading the file). */
export function hostKeyFromPem(pem: string, file = '(memory)'): HostKeyPair {
  let key: crypto.KeyObject;
  try {
    key = crypto.createPrivateKey({ key: pem, format: 'pem' });
  } catch (e) {
    throw new HostKeyError(`${file} is not a readable private key: ${(e as Error).message}`);
  }
  return pairFromPrivate(key, file);
}

/** A raw 32-byte X25519 private key → the pair (fixed test vectors). */
export function hostKeyFromRaw(raw: Uint8Array): HostKeyPair {
  if (raw.length !== 32) throw new HostKeyError('an X25519 private key is 32 bytes');
  // PKCS#8 prefix of an X25519 private key (RFC 8410): the raw key follows these 16 bytes.
  const prefix = Buffer.from('302e020100300506032b656e04220420', 'hex');
  const key = crypto.createPrivateKey({ key: Buffer.concat([prefix, raw]), format: 'der', type: 'pkcs8' });
  return pairFromPrivate(key, '(memory)');
}

/** Raw public key → the host record's text form. */
export function encodePublicKey(raw: Uint8Array): string {
  if (raw.length !== PUBLIC_KEY_LENGTH) throw new HostKeyError('an X25519 public key is 32 bytes');
  return PUBLIC_KEY_PREFIX + Buffer.from(raw).toString('base64url');
}

/** The host record's text form → a public key. Throws HostKeyError on anything else. */
export function decodePublicKey(text: string): { raw: Buffer; key: crypto.KeyObject } {
  if (typeof text !== 'string' || !text.startsWith(PUBLIC_KEY_PREFIX)) {
    throw new HostKeyError(`public key ${JSON.stringify(text)} is not of the form x25519:<base64url>`);
  }
  const b64 = text.slice(PUBLIC_KEY_PREFIX.length);
  const raw = Buffer.from(b64, 'base64url');
  if (raw.length !== PUBLIC_KEY_LENGTH || raw.toString('base64url') !== b64) {
    throw new HostKeyError(`public key ${JSON.stringify(text)} is not 32 bytes of base64url`);
  }
  const key = crypto.createPublicKey({ key: { kty: 'OKP', crv: 'X25519', x: b64 }, format: 'jwk' });
  return { raw, key };
}

/**
 * Loads the host key from `<stateDir>/host-key.pem`, making it on first start. The file is
 * created with mode 0600 under a temporary name and linked into place, so a crash never leaves
 * a half-written key and two processes starting at once end up with the same key. A key file
 * that group or others can read is refused rather than used: it may have been copied.
 */
export function loadOrCreateHostKey(stateDir: string): HostKeyPair {
  const file = path.join(stateDir, HOST_KEY_FILE);
  const existing = readKeyFile(file);
  if (existing) return existing;

  fs.mkdirSync(stateDir, { recursive: true, mode: 0o700 });
  const { privateKey } = crypto.generateKeyPairSync('x25519');
  const pem = privateKey.export({ format: 'pem', type: 'pkcs8' }).toString();
  const tmp = `${file}.${process.pid}.${crypto.randomBytes(4).toString('hex')}.tmp`;
  const fd = fs.openSync(tmp, fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_EXCL, 0o600);
  try {
    try {
      fs.writeSync(fd, pem);
      fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
    try {
      fs.linkSync(tmp, file);
    } catch (e) {
      // Another process made the key first: use theirs.
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
    }
  } finally {
    fs.rmSync(tmp, { force: true });
  }
  syncDir(stateDir);
  const made = readKeyFile(file);
  if (!made) throw new HostKeyError(`${file} vanished right after it was written`);
  return made;
}

/** The host key if it exists (never makes one): for `inspect`, which must not change the host. */
export function loadHostKey(stateDir: string): HostKeyPair | undefined {
  return readKeyFile(path.join(stateDir, HOST_KEY_FILE));
}

function readKeyFile(file: string): HostKeyPair | undefined {
  let fd: number;
  try {
    fd = fs.openSync(file, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') return undefined;
    if (code === 'ELOOP') throw new HostKeyError(`${file} is a symbolic link; refusing to use it as the host key`);
    throw e;
  }
  try {
    const st = fs.fstatSync(fd);
    if (!st.isFile()) throw new HostKeyError(`${file} is not a regular file`);
    if ((st.mode & 0o077) !== 0) {
      throw new HostKeyError(
        `${file} is readable by group or others (mode ${(st.mode & 0o777).toString(8)}); ` +
          `run chmod 600 ${file} if it was never exposed, or remove it to make a new key`,
      );
    }
    if (process.getuid && st.uid !== process.getuid()) {
      throw new HostKeyError(`${file} belongs to uid ${st.uid}, not to this process (uid ${process.getuid()})`);
    }
    return hostKeyFromPem(fs.readFileSync(fd, 'utf8'), file);
  } finally {
    fs.closeSync(fd);
  }
}

function syncDir(dir: string): void {
  let fd: number | undefined;
  try {
    fd = fs.openSync(dir, 'r');
    fs.fsyncSync(fd);
  } catch {
    // Directory fsync is not supported everywhere; the key itself was synced.
  } finally {
    if (fd !== undefined) fs.closeSync(fd);
  }
}
