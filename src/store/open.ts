/**
 * Store URL → backend:
 *   local:///var/lib/tsoverlay          embedded file store in that directory
 *   etcd://h1:2379[,h2:2379]            etcd (etcds:// for TLS; `user:pass@` accepted)
 *   consul://h:8500                     Consul (consuls:// for HTTPS); `consul://` alone uses
 *                                       CONSUL_HTTP_ADDR (else 127.0.0.1:8500)
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
  | { kind: 'consul'; secure: boolean; host: string; port: number };

export class StoreUrlError extends Error {
  constructor(url: string, reason: string) {
    // Never echo credentials back.
    super(`invalid store URL ${redactUrl(url)}: ${reason}`);
    this.name = 'StoreUrlError';
  }
}

/** The URL with any `user:password@` removed (for messages and logs). */
export function redactUrl(url: string): string {
  return url.replace(/^([a-z][a-z0-9+.-]*:\/\/)[^/@]*@/i, '$1');
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
  const m = /^([a-z][a-z0-9+.-]*):(?:\/\/([^/?#]*))?([^?#]*)$/i.exec(url.trim());
  if (!m) throw new StoreUrlError(url, 'expected local:///dir, etcd://host:port[,host:port] or consul://host:port');
  const scheme = (m[1] ?? '').toLowerCase();
  const authority = m[2] ?? '';
  const path = m[3] ?? '';

  if (scheme === 'local') {
    if (authority !== '' && authority !== 'localhost') {
      throw new StoreUrlError(url, 'a local store URL has no host: use local:///absolute/dir');
    }
    if (!path.startsWith('/')) throw new StoreUrlError(url, 'a local store needs an absolute directory: local:///var/lib/tsoverlay');
    const dir = decodeURIComponent(path).replace(/\/+$/, '') || '/';
    return { kind: 'local', dir };
  }

  if (path !== '' && path !== '/') throw new StoreUrlError(url, `unexpected path "${path}"`);

  if (scheme === 'etcd' || scheme === 'etcds') {
    let hosts = authority;
    let username: string | undefined;
    let password: string | undefined;
    const at = authority.lastIndexOf('@');
    if (at >= 0) {
      const userinfo = authority.slice(0, at);
      hosts = authority.slice(at + 1);
      const colon = userinfo.indexOf(':');
      username = decodeURIComponent(colon >= 0 ? userinfo.slice(0, colon) : userinfo);
      password = colon >= 0 ? decodeURIComponent(userinfo.slice(colon + 1)) : undefined;
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
        if (!am) throw new StoreUrlError(url, `CONSUL_HTTP_ADDR "${addr}" is not host:port or http(s)://host:port`);
        if (am[1]?.toLowerCase() === 'https') secure = true;
        hostText = am[2] ?? '';
      } else {
        hostText = '127.0.0.1:8500';
      }
      if (/^(1|true)$/i.test(env.CONSUL_HTTP_SSL ?? '')) secure = true;
    }
    if (hostText.includes('@')) throw new StoreUrlError(url, 'credentials in a Consul URL are not supported; use the token option or CONSUL_HTTP_TOKEN');
    const hp = parseHostPort(url, hostText, 8500);
    return { kind: 'consul', secure, host: hp.host, port: hp.port };
  }

  throw new StoreUrlError(url, `unknown scheme "${scheme}:" (use local://, etcd://, etcds://, consul:// or consuls://)`);
}

async function readPem(what: string, file: string | undefined): Promise<Buffer | undefined> {
  if (file === undefined) return undefined;
  // The PEM text itself (e.g. `docker plugin set tsoverlay ETCD_CA="$(cat ca.pem)"`).
  if (file.trimStart().startsWith('-----BEGIN ')) return Buffer.from(file.trim() + '\n');
  try {
    return await fsp.readFile(file);
  } catch (err) {
    throw new Error(`etcd ${what} file ${file} cannot be read: ${(err as Error).message}`);
  }
}

async function consulToken(opts: OpenStoreOptions, env: NodeJS.ProcessEnv): Promise<string | undefined> {
  if (opts.consulToken) return opts.consulToken;
  if (env.CONSUL_HTTP_TOKEN) return env.CONSUL_HTTP_TOKEN;
  if (env.CONSUL_HTTP_TOKEN_FILE) {
    try {
      return (await fsp.readFile(env.CONSUL_HTTP_TOKEN_FILE, 'utf8')).trim() || undefined;
    } catch (err) {
      throw new Error(`CONSUL_HTTP_TOKEN_FILE ${env.CONSUL_HTTP_TOKEN_FILE} cannot be read: ${(err as Error).message}`);
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
