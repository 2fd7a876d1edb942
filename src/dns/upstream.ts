/**
 * Names outside a network's zone go to the host's own resolvers, read from the host
 * namespace's resolv.conf, and are sent from the host namespace (the plugin's own), where
 * those resolvers are reachable even when the overlay is `--internal`.
 */
import dgram from 'node:dgram';
import fs from 'node:fs';
import net from 'node:net';
import { randomInt } from 'node:crypto';

export interface Upstream {
  address: string;
  port: number;
}

/** Docker's embedded resolver: it exists only inside containers, never in the host namespace. */
const DOCKER_EMBEDDED = '127.0.0.11';
/** systemd-resolved's stub; its real upstreams are listed in this file. */
const RESOLVED_STUB = '127.0.0.53';
export const RESOLVED_UPSTREAMS = '/run/systemd/resolve/resolv.conf';
/** glibc reads at most three `nameserver` lines; Docker too. */
const MAX_UPSTREAMS = 3;

/** The `nameserver` addresses of a resolv.conf text, in order, without Docker's embedded one. */
export function parseResolvConf(text: string): Upstream[] {
  const out: Upstream[] = [];
  for (const raw of text.split('\n')) {
    const line = raw.replace(/[#;].*$/, '').trim();
    const m = /^nameserver\s+(\S+)$/.exec(line);
    if (!m) continue;
    // A scoped IPv6 address (fe80::1%eth0) names an interface of the host; node accepts the form.
    const address = m[1]!;
    if (net.isIP(address.replace(/%.*$/, '')) === 0 || address === DOCKER_EMBEDDED) continue;
    if (!out.some((u) => u.address === address)) out.push({ address, port: 53 });
  }
  return out.slice(0, MAX_UPSTREAMS);
}

/**
 * The host's resolvers. With systemd-resolved's stub in resolv.conf, its real upstreams (as
 * Docker does), falling back to the stub itself: it is a loopback address of the host
 * namespace, where the forwarder's sockets live, so it does answer.
 */
export function hostResolvers(file = '/etc/resolv.conf', resolvedFile = RESOLVED_UPSTREAMS): Upstream[] {
  const servers = parseResolvConf(readOrEmpty(file));
  if (servers.length === 1 && servers[0]!.address === RESOLVED_STUB) {
    const real = parseResolvConf(readOrEmpty(resolvedFile)).filter((u) => u.address !== RESOLVED_STUB);
    if (real.length > 0) return real;
  }
  return servers;
}

function readOrEmpty(file: string): string {
  try {
    return fs.readFileSync(file, 'utf8');
  } catch {
    return '';
  }
}

/** Parses `host[:port]` / `[v6]:port` lists as given with --dns-upstream. */
export function parseUpstreams(spec: string): Upstream[] {
  const out: Upstream[] = [];
  for (const item of spec.split(',').map((s) => s.trim()).filter(Boolean)) {
    const m = /^\[([^\]]+)\](?::(\d+))?$/.exec(item) ?? /^([^:]+)(?::(\d+))?$/.exec(item) ?? [item, item, undefined];
    const address = m[1]!;
    const port = m[2] === undefined ? 53 : Number(m[2]);
    if (net.isIP(address) === 0) throw new Error(`DNS upstream "${item}" is not an IP address`);
    if (!Number.isInteger(port) || port < 1 || port > 65535) throw new Error(`DNS upstream "${item}" has an invalid port`);
    out.push({ address, port });
  }
  return out;
}

interface Pending {
  originalId: number;
  upstream: Upstream;
  resolve(reply: Buffer | undefined): void;
  timer: NodeJS.Timeout;
}

export interface ForwarderOptions {
  /** Where to send; called per query, so a changed resolv.conf is picked up. */
  upstreams: () => Upstream[];
  /** Per upstream try; Docker's resolver gives the whole lookup 4 s. */
  timeoutMs?: number;
  /** Most queries in flight at once over UDP; more are answered SERVFAIL at once. */
  maxPending?: number;
}

/** Sends queries to the upstreams in order until one answers; the reply carries the client's id. */
export class Forwarder {
  private readonly sockets = new Map<4 | 6, dgram.Socket>();
  private readonly pending = new Map<string, Pending>();
  private readonly timeoutMs: number;
  private readonly maxPending: number;
  private closed = false;

  constructor(private readonly options: ForwarderOptions) {
    this.timeoutMs = options.timeoutMs ?? 1500;
    this.maxPending = options.maxPending ?? 4096;
  }

  /** The upstream reply (its id set back to the query's), or undefined when none answered. */
  async forward(query: Buffer, transport: 'udp' | 'tcp'): Promise<Buffer | undefined> {
    if (query.length < 12 || this.closed) return undefined;
    for (const upstream of this.options.upstreams()) {
      const reply = transport === 'tcp' ? await this.overTcp(query, upstream) : await this.overUdp(query, upstream);
      if (reply) return reply;
    }
    return undefined;
  }

  private socket(family: 4 | 6): dgram.Socket {
    let s = this.sockets.get(family);
    if (!s) {
      const sock = dgram.createSocket(family === 4 ? 'udp4' : 'udp6');
      sock.on('message', (msg, rinfo) => this.onReply(msg, rinfo));
      // A send error (unreachable upstream) ends that query by its timeout; the socket stays.
      sock.on('error', () => undefined);
      sock.unref();
      this.sockets.set(family, sock);
      s = sock;
    }
    return s;
  }

  private onReply(msg: Buffer, rinfo: dgram.RemoteInfo): void {
    if (msg.length < 12) return;
    const key = `${msg.readUInt16BE(0)}`;
    const p = this.pending.get(key);
    // Only the upstream we asked may answer (another sender guessing ids is ignored).
    if (!p || p.upstream.address.replace(/%.*$/, '') !== rinfo.address.replace(/%.*$/, '') || p.upstream.port !== rinfo.port) return;
    this.pending.delete(key);
    clearTimeout(p.timer);
    const out = Buffer.from(msg);
    out.writeUInt16BE(p.originalId, 0);
    p.resolve(out);
  }

  private overUdp(query: Buffer, upstream: Upstream): Promise<Buffer | undefined> {
    if (this.pending.size >= this.maxPending) return Promise.resolve(undefined);
    let id: number;
    do id = randomInt(0, 65536);
    while (this.pending.has(`${id}`));
    const out = Buffer.from(query);
    out.writeUInt16BE(id, 0);
    return new Promise((resolve) => {
      const key = `${id}`;
      const timer = setTimeout(() => {
        this.pending.delete(key);
        resolve(undefined);
      }, this.timeoutMs);
      timer.unref();
      this.pending.set(key, { originalId: query.readUInt16BE(0), upstream, resolve, timer });
      this.socket(net.isIPv6(upstream.address.replace(/%.*$/, '')) ? 6 : 4).send(out, upstream.port, upstream.address, (err) => {
        if (err && this.pending.get(key)?.timer === timer) {
          this.pending.delete(key);
          clearTimeout(timer);
          resolve(undefined);
        }
      });
    });
  }

  private overTcp(query: Buffer, upstream: Upstream): Promise<Buffer | undefined> {
    return new Promise((resolve) => {
      let settled = false;
      let buf: Buffer = Buffer.alloc(0);
      const sock = net.connect({ host: upstream.address, port: upstream.port });
      const finish = (reply: Buffer | undefined): void => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        sock.destroy();
        resolve(reply);
      };
      const timer = setTimeout(() => finish(undefined), this.timeoutMs);
      timer.unref();
      sock.on('connect', () => {
        const len = Buffer.alloc(2);
        len.writeUInt16BE(query.length, 0);
        sock.write(Buffer.concat([len, query]));
      });
      sock.on('data', (chunk: Buffer) => {
        buf = Buffer.concat([buf, chunk]);
        if (buf.length < 2) return;
        const n = buf.readUInt16BE(0);
        if (buf.length < 2 + n) return;
        const reply = Buffer.from(buf.subarray(2, 2 + n));
        finish(reply.length >= 12 && reply.readUInt16BE(0) === query.readUInt16BE(0) ? reply : undefined);
      });
      sock.on('error', () => finish(undefined));
      sock.on('close', () => finish(undefined));
    });
  }

  close(): void {
    this.closed = true;
    for (const p of this.pending.values()) {
      clearTimeout(p.timer);
      p.resolve(undefined);
    }
    this.pending.clear();
    for (const s of this.sockets.values()) s.close();
    this.sockets.clear();
  }
}
