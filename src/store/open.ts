/**
 * Store URL → backend:
 *   local:///var/lib/tsoverlay          embedded file store in that directory
 *   etcd://h1:2379[,h2:2379]            etcd (etcds:// for TLS; `user:pass@` accepted, but it
 *                                       shows in `ps` and `docker plugin inspect`: prefer
 *                                       --etcd-user with --etcd-password-file)
 *   consul://h:8500[,h2:8500]           Consul (consuls:// for HTTPS): the host's local agent, or
 *                                       the servers, tried in order when one does not answer;
 *                                       `consul://` alone uses CONSUL_HTTP_ADDR (else 127.0.0.1:8500)
 * Store.description never contains credentials.
 */

import { promises as fsp } from 'node:fs';

import type { Logger } from '../log';
import type { Store } from './store';
// Only types here: each backend (etcd3 brings gRPC, by far the largest) is loaded when a store URL
// asks for it, so a host pays in resident memory only for the store it uses (docs/benchmarks.md, Footprint).
import type { EtcdTlsOptions } from './etcd';

export interface EtcdConnectOptions {
  /** PEM files for TLS (or the PEM text itself); giving any of them implies TLS. */
  caFile?: string;
  certFile?: string;
  keyFile?: string;
  username?: string;
  password?: string;
}

export interface OpenStoreOptions {
  /** Key prefix, default `tsoverlay/v1/`. */
  prefix?: string;
  logger: Logger;
  etcd?: EtcdConnectOptions;
  /** Consul ACL token; default CONSUL_HTTP_TOKEN (or the file named by CONSUL_HTTP_TOKEN_FILE). */
  consulToken?: string;
  /** Per-call deadline for etcd/Consul, default DEFAULT_TIMEOUT_MS (10 s). */
  timeoutMs?: number;
  /** Environment to read CONSUL_* from (tests); default process.env. */
  env?: NodeJS.ProcessEnv;
}

export interface HostPort {
  host: string;
  port: number;
}

export type StoreLocation =
  | { kind: 'local'; dir: string }
  | { kind: 'etcd'; secure: boolean; endpoints: HostPort[]; username?: string; password?: string }
  | { kind: 'consul'; secure: boolean; host: string; port: number; fallbacks?: HostPort[] };

export class StoreUrlError extends Error {
  constructor(url: string, reason: string) {
    // Never echo credentials back.
    super(`invalid store URL ${redactUrl(url)}: ${reason}`);
    this.name = 'StoreUrlError';
  }
}

/**
 * The URL without its credentials (for messages and logs). A host list never holds an `@`, so
 * everything between `scheme://` and the LAST `@` is userinfo, whatever the password contains
 * (`/`, `#`, `?`, `:`, `,`, more `@`, percent escapes); without a `scheme://` everything before
 * the last `@` goes. What is left of the host part loses any query or fragment too. Removing too
 * much only makes a message vaguer; removing too little would print part of a secret.
 */
export function redactUrl(url: string): string {
  const scheme = /^[a-z][a-z0-9+.-]*:\/\//i.exec(url)?.[0] ?? '';
  let rest = url.slice(scheme.length);
  const at = rest.lastIndexOf('@');
  if (at >= 0) rest = rest.slice(at + 1);
  const cut = rest.search(/[?#]/);
  return scheme + (cut >= 0 ? `${rest.slice(0, cut)}?…` : rest);
}

/** Percent-decodes one part of the userinfo; a stray `%` is an error that quotes nothing. */
function decodeUserinfo(url: string, part: string, what: string): string {
  try {
    return decodeURIComponent(part);
  } catch {
    throw new StoreUrlError(
      url,
      `the ${what} in the URL has a "%" that is not followed by two hex digits: write "%" as %25 ` +
        '(or leave the credentials out of the URL and use --etcd-user with --etcd-password-file)',
    );
  }
}

function parseHostPort(url: string, text: string, defaultPort: number): HostPort {
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([^:[\]]+))(?::(\d+))?$/.exec(text);
  if (!m) throw new StoreUrlError(url, `bad host "${text}" (expected host[:port] or [ipv6][:port])`);
  const host = m[1] ?? m[2] ?? '';
  const port = m[3] === undefined ? defaultPort : Number(m[3]);
  if (!Number.isInteger(port) || port < 1 || port > 65535) throw new StoreUrlError(url, `bad port in "${text}"`);
  return { host, port };
}

function formatHostPort(hp: HostPort): string {
  return `${hp.host.includes(':') ? `[${hp.host}]` : hp.host}:${hp.port}`;
}

export function parseStoreUrl(url: string, env: NodeJS.ProcessEnv = process.env): StoreLocation {
  const usage = 'expected local:///dir, etcd://host:port[,host:port] or consul://host:port[,host:port]';
  const sm = /^([a-z][a-z0-9+.-]*):/i.exec(url.trim());
  if (!sm) throw new StoreUrlError(url, usage);
  const scheme = (sm[1] ?? '').toLowerCase();
  const rest = url.trim().slice(sm[0].length);

  if (scheme === 'local') {
    const m = /^(?:\/\/([^/?#]*))?([^?#]*)$/.exec(rest);
    if (!m) throw new StoreUrlError(url, usage);
    const authority = m[1] ?? '';
    const path = m[2] ?? '';
    if (authority !== '' && authority !== 'localhost') {
      throw new StoreUrlError(url, 'a local store URL has no host: use local:///absolute/dir');
    }
    if (!path.startsWith('/')) throw new StoreUrlError(url, 'a local store needs an absolute directory: local:///var/lib/tsoverlay');
    let dir: string;
    try {
      dir = decodeURIComponent(path).replace(/\/+$/, '') || '/';
    } catch {
      throw new StoreUrlError(url, 'the directory has a "%" that is not followed by two hex digits: write "%" as %25');
    }
    return { kind: 'local', dir };
  }

  if (scheme !== 'etcd' && scheme !== 'etcds' && scheme !== 'consul' && scheme !== 'consuls') {
    throw new StoreUrlError(url, `unknown scheme "${scheme}:" (use local://, etcd://, etcds://, consul:// or consuls://)`);
  }
  if (!rest.startsWith('//') && rest !== '') throw new StoreUrlError(url, usage);
  // The userinfo runs to the LAST "@" (a password may hold "@", "/", "#", "?", ","): the same
  // rule as redactUrl, so what is parsed as the host is exactly what messages show.
  const afterSlashes = rest.slice(2);
  const at = afterSlashes.lastIndexOf('@');
  const userinfo = at >= 0 ? afterSlashes.slice(0, at) : undefined;
  const hostPart = afterSlashes.slice(at + 1);
  const pm = /^([^/?#]*)(\/?)$/.exec(hostPart);
  if (!pm) throw new StoreUrlError(url, 'unexpected path, query or fragment after the host list');
  const authority = pm[1] ?? '';

  if (scheme === 'etcd' || scheme === 'etcds') {
    const hosts = authority;
    let username: string | undefined;
    let password: string | undefined;
    if (userinfo !== undefined) {
      const colon = userinfo.indexOf(':');
      username = decodeUserinfo(url, colon >= 0 ? userinfo.slice(0, colon) : userinfo, 'user name');
      password = colon >= 0 ? decodeUserinfo(url, userinfo.slice(colon + 1), 'password') : undefined;
    }
    if (hosts === '') throw new StoreUrlError(url, 'no etcd endpoint given');
    const endpoints = hosts.split(',').map((h) => parseHostPort(url, h.trim(), 2379));
    return { kind: 'etcd', secure: scheme === 'etcds', endpoints, username, password };
  }

  if (scheme === 'consul' || scheme === 'consuls') {
    let secure = scheme === 'consuls';
    let hostText = authority;
    if (hostText === '') {
      const addr = env.CONSUL_HTTP_ADDR?.trim();
      if (addr) {
        const am = /^(?:(https?):\/\/)?([^/]+)\/?$/i.exec(addr);
        if (!am) throw new StoreUrlError(url, `CONSUL_HTTP_ADDR "${redactUrl(addr)}" is not host:port or http(s)://host:port`);
        if (am[1]?.toLowerCase() === 'https') secure = true;
        hostText = am[2] ?? '';
      } else {
        hostText = '127.0.0.1:8500';
      }
      if (/^(1|true)$/i.test(env.CONSUL_HTTP_SSL ?? '')) secure = true;
    }
    if (userinfo !== undefined || hostText.includes('@')) {
      throw new StoreUrlError(url, 'credentials in a Consul URL are not supported; use CONSUL_HTTP_TOKEN_FILE (or CONSUL_HTTP_TOKEN)');
    }
    const [hp, ...fallbacks] = hostText.split(',').map((h) => parseHostPort(url, h.trim(), 8500));
    if (!hp) throw new StoreUrlError(url, 'no Consul address given');
    return { kind: 'consul', secure, host: hp.host, port: hp.port, ...(fallbacks.length > 0 ? { fallbacks } : {}) };
  }
  throw new StoreUrlError(url, `unknown scheme "${scheme}:"`);
}

async function readPem(what: string, file: string | undefined): Promise<Buffer | undefined> {
  if (file === undefined) return undefined;
  // The PEM text itself (e.g. `docker plugin set tsoverlay ETCD_CA="$(cat ca.pem)"`); OpenSSL
  // skips text before the BEGIN line (`Bag Attributes` from `openssl pkcs12`).
  if (file.includes('-----BEGIN ')) return Buffer.from(file.trim() + '\n');
  try {
    return await fsp.readFile(file);
  } catch (err) {
    // The CA and certificate are public; what was given for the key may be key material
    // (base64 pasted without its BEGIN line looks like a path), so it is never quoted.
    const shown = what === 'key' ? 'file (the value given is not shown: it may be key material)' : `file ${file}`;
    throw new Error(`etcd ${what} ${shown} cannot be read: ${errnoText(err)}`);
  }
}

/** The error code of a file error, without Node's message (which quotes the path). */
function errnoText(err: unknown): string {
  const code = typeof err === 'object' && err !== null && 'code' in err ? String((err as { code: unknown }).code) : undefined;
  return code ?? 'error';
}

async function consulToken(opts: OpenStoreOptions, env: NodeJS.ProcessEnv): Promise<string | undefined> {
  if (opts.consulToken) return opts.consulToken;
  if (env.CONSUL_HTTP_TOKEN) return env.CONSUL_HTTP_TOKEN;
  if (env.CONSUL_HTTP_TOKEN_FILE) {
    try {
      return (await fsp.readFile(env.CONSUL_HTTP_TOKEN_FILE, 'utf8')).trim() || undefined;
    } catch (err) {
      throw new Error(`CONSUL_HTTP_TOKEN_FILE ${env.CONSUL_HTTP_TOKEN_FILE} cannot be read: ${errnoText(err)}`);
    }
  }
  return undefined;
}

/** Opens (does not probe) the store named by `url`. Network backends connect lazily. */
export async function openStore(url: string, opts: OpenStoreOptions): Promise<Store> {
  const env = opts.env ?? process.env;
  const loc = parseStoreUrl(url, env);
  let store: Store;
  switch (loc.kind) {
    case 'local': {
      const { LocalStore } = await import('./local');
      store = await LocalStore.open({ dir: loc.dir, prefix: opts.prefix, logger: opts.logger });
      break;
    }
    case 'etcd': {
      const e = opts.etcd ?? {};
      const [ca, cert, key] = await Promise.all([
        readPem('CA', e.caFile),
        readPem('certificate', e.certFile),
        readPem('key', e.keyFile),
      ]);
      const tls: EtcdTlsOptions | undefined =
        ca || cert || key ? { ...(ca ? { ca } : {}), ...(cert ? { cert } : {}), ...(key ? { key } : {}) } : undefined;
      const username = e.username ?? loc.username;
      const password = e.password ?? loc.password;
      if ((username === undefined) !== (password === undefined)) {
        throw new Error('etcd authentication needs both a user name and a password');
      }
      const { EtcdStore } = await import('./etcd');
      store = new EtcdStore({
        endpoints: loc.endpoints.map(formatHostPort),
        secure: loc.secure || tls !== undefined,
        tls,
        auth: username !== undefined && password !== undefined ? { username, password } : undefined,
        prefix: opts.prefix,
        timeoutMs: opts.timeoutMs,
        logger: opts.logger,
      });
      break;
    }
    case 'consul': {
      const { ConsulStore } = await import('./consul');
      store = new ConsulStore({
        host: loc.host,
        port: loc.port,
        fallbacks: loc.fallbacks,
        secure: loc.secure,
        token: await consulToken(opts, env),
        prefix: opts.prefix,
        timeoutMs: opts.timeoutMs,
        logger: opts.logger,
      });
      break;
    }
  }
  opts.logger.info('store opened', { store: store.description, distributed: store.distributed });
  return store;
}
