/**
 * A DNS server for one network: UDP and TCP on the same address, answering the network's
 * names from a ZoneView and forwarding the rest. Nothing a client sends may stop it: every
 * message ends in a reply or is dropped, and socket errors are counted, not thrown.
 */
import dgram from 'node:dgram';
import net from 'node:net';
import type { Logger } from '../log';
import { errorMessage } from '../util/errors';
import { handleQuery, messageId, servfail } from './message';
import { bindUdpHere, closeFd } from './netns-sockets';
import { noopDnsObserver, type DnsObserver, type Transport, type ZoneView } from './types';
import { batchingAvailable, receiveBatch, RECV_SLOT, ReplyBatch, senderOf } from './udp-batch';
import type { Forwarder } from './upstream';

/** Where to listen: an address (tests, benchmarks) or sockets already bound elsewhere (an overlay namespace). */
export type ListenTarget = { address: string; port: number } | { udpFd: number; tcpFd: number; ipv6?: boolean };

export interface DnsServerDeps {
  view: ZoneView;
  forwarder?: Forwarder;
  observer?: DnsObserver;
  logger: Logger;
}

/** A TCP client that sends nothing for this long is disconnected (RFC 7766 suggests seconds). */
const TCP_IDLE_MS = 10_000;
const TCP_MAX_CONNECTIONS = 128;
/** Answers kept ready to send, per server; dropped whole when the view changes or it fills. */
const CACHE_MAX = 20_000;

export class DnsServer {
  private readonly observer: DnsObserver;
  private readonly connections = new Set<net.Socket>();
  /** Encoded replies by query bytes after the id (and transport), valid for one view generation. */
  private cache = new Map<string, Buffer>();
  private cacheGeneration = -1;
  private closed = false;
  private readonly replies = new ReplyBatch();
  /** The UDP descriptor, while queued datagrams are taken in batches (udp-batch.ts). */
  private batchFd: number | undefined;

  private constructor(
    private readonly udp: dgram.Socket,
    private readonly tcp: net.Server,
    private readonly deps: DnsServerDeps,
  ) {
    this.observer = deps.observer ?? noopDnsObserver;
  }

  static async start(target: ListenTarget, deps: DnsServerDeps): Promise<DnsServer> {
    // The type decides how node reads the addresses it sends to: it must match the socket's family.
    const ipv6 = 'udpFd' in target ? target.ipv6 === true : net.isIPv6(target.address);
    // Replies go to the address a query came from, always an IP literal: resolving it through
    // dns.lookup (node's default) costs a deferred callback per reply for nothing.
    const udp = dgram.createSocket({ type: ipv6 ? 'udp6' : 'udp4', reuseAddr: true, lookup: literalLookup });
    const tcp = net.createServer({ pauseOnConnect: false });
    tcp.maxConnections = TCP_MAX_CONNECTIONS;
    const server = new DnsServer(udp, tcp, deps);
    udp.on('message', (msg, rinfo) => server.onDatagram(msg, rinfo));
    tcp.on('connection', (sock) => server.onConnection(sock));
    // The descriptor is ours (not node's) so that queued datagrams can be taken in batches.
    let udpFd: number | undefined;
    let udpTaken = false;
    try {
      udpFd = 'udpFd' in target ? target.udpFd : bindUdpHere(target.address, target.port);
      const fd = udpFd;
      await new Promise<void>((resolve, reject) => {
        udp.once('error', reject);
        udp.bind({ fd }, () => resolve());
      });
      udpTaken = true;
      if (batchingAvailable()) server.batchFd = fd;
      udp.removeAllListeners('error');
      udp.on('error', (err) => server.socketError('udp', err));
      const port = udp.address().port;
      await new Promise<void>((resolve, reject) => {
        tcp.once('error', reject);
        if ('tcpFd' in target) tcp.listen({ fd: target.tcpFd }, () => resolve());
        else tcp.listen({ host: target.address, port }, () => resolve());
      });
      tcp.removeAllListeners('error');
      tcp.on('error', (err) => server.socketError('tcp', err));
    } catch (err) {
      // A descriptor node never took over is closed here; one it did, by udp.close().
      if (udpFd !== undefined && !udpTaken && !('udpFd' in target)) closeFd(udpFd);
      server.batchFd = undefined;
      udp.close();
      tcp.close();
      throw err;
    }
    return server;
  }

  /** The UDP address (the TCP listener has the same one). */
  address(): { address: string; port: number } {
    const a = this.udp.address();
    return { address: a.address, port: a.port };
  }

  private socketError(transport: Transport, err: Error): void {
    this.observer.failure(`${transport}_socket`);
    this.deps.logger.warn('DNS socket error', { transport, error: errorMessage(err) });
  }

  private onDatagram(msg: Buffer, rinfo: dgram.RemoteInfo): void {
    this.observer.query('udp');
    if (msg.length > RECV_SLOT) {
      // As a batch would (it has no room for more): the same datagram gets the same treatment.
      this.observer.failure('dropped_oversized');
      if (this.batchFd !== undefined) this.drainQueued(this.batchFd);
      return;
    }
    const local = this.answerLocally(msg, 'udp');
    if (local === FORWARD) {
      void this.forward(msg, 'udp').then((reply) => this.sendUdp(reply, rinfo));
    } else if (local) {
      this.sendUdp(local, rinfo);
    }
    if (this.batchFd !== undefined) this.drainQueued(this.batchFd);
  }

  /** Answers the datagrams queued behind the one node delivered: one receive, one send for all. */
  private drainQueued(fd: number): void {
    if (this.closed) return;
    let batch;
    try {
      batch = receiveBatch(fd);
    } catch (err) {
      this.stopBatching(err);
      return;
    }
    if (batch.length === 0) return;
    this.observer.query('udp', batch.length);
    for (const { msg, from, truncated } of batch) {
      if (truncated) {
        this.observer.failure('dropped_oversized');
        continue;
      }
      const local = this.answerLocally(msg, 'udp', true);
      if (local === FORWARD) {
        // The batch's buffers are reused by the next receive: the query and its sender are copied.
        const to = senderOf(from);
        if (to) void this.forward(Buffer.from(msg), 'udp').then((reply) => this.sendUdp(reply, to));
      } else if (local && !this.replies.add(from, local, msg)) {
        const to = senderOf(from);
        const own = Buffer.from(local);
        own[0] = msg[0]!;
        own[1] = msg[1]!;
        if (to) this.sendUdp(own, to);
      }
    }
    const { unsent, error } = this.replies.flush(fd);
    for (let i = 0; i < unsent; i++) this.observer.failure('udp_send');
    if (error) this.deps.logger.debug('DNS replies not sent', { unsent, error: errorMessage(error) });
  }

  private stopBatching(err: unknown): void {
    this.batchFd = undefined;
    this.observer.failure('udp_socket');
    this.deps.logger.warn('DNS listener reads one datagram at a time from now on', { error: errorMessage(err) });
  }

  private sendUdp(reply: Buffer | undefined, to: { address: string; port: number }): void {
    // Send errors (a client gone) surface as the socket's 'error' event, counted there.
    if (reply && !this.closed) this.udp.send(reply, to.port, to.address);
  }

  private onConnection(sock: net.Socket): void {
    this.connections.add(sock);
    sock.setTimeout(TCP_IDLE_MS, () => sock.destroy());
    sock.on('close', () => this.connections.delete(sock));
    sock.on('error', () => undefined);
    const write = (reply: Buffer | undefined): void => {
      if (!reply || sock.destroyed) return;
      const len = Buffer.alloc(2);
      len.writeUInt16BE(reply.length, 0);
      sock.write(Buffer.concat([len, reply]));
    };
    let buf: Buffer = Buffer.alloc(0);
    sock.on('data', (chunk: Buffer) => {
      buf = buf.length === 0 ? chunk : Buffer.concat([buf, chunk]);
      while (buf.length >= 2) {
        const n = buf.readUInt16BE(0);
        if (buf.length < 2 + n) break;
        const msg = Buffer.from(buf.subarray(2, 2 + n));
        buf = buf.subarray(2 + n);
        this.observer.query('tcp');
        const local = this.answerLocally(msg, 'tcp');
        if (local === FORWARD) void this.forward(msg, 'tcp').then(write);
        else write(local);
      }
    });
  }

  /**
   * The reply from the network's names (synchronously: the common case costs no promise),
   * undefined to send nothing, or FORWARD. Never throws. `shared`: a cached reply is returned
   * as the cache holds it, with another query's id, for a caller that copies it and sets the id.
   */
  private answerLocally(msg: Buffer, transport: Transport, shared = false): Buffer | undefined | typeof FORWARD {
    try {
      const view = this.deps.view;
      if (this.cacheGeneration !== view.generation) {
        this.cache = new Map();
        this.cacheGeneration = view.generation;
      }
      // The query after its id: equal bytes get an equal answer (case, flags and EDNS included).
      const key = msg.length >= 12 ? (transport === 'udp' ? msg.toString('latin1', 2) : `t${msg.toString('latin1', 2)}`) : undefined;
      const cached = key !== undefined ? this.cache.get(key) : undefined;
      if (cached) {
        this.observer.answer(RCODE_NAMES[cached[3]! & 0xf] ?? 'OTHER');
        if (shared) return cached;
        const out = Buffer.allocUnsafe(cached.length);
        cached.copy(out);
        out[0] = msg[0]!;
        out[1] = msg[1]!;
        return out;
      }
      const decision = handleQuery(msg, view, transport);
      if (decision.kind === 'drop') {
        this.observer.failure(`dropped_${decision.reason}`);
        return undefined;
      }
      if (decision.kind === 'forward') return FORWARD;
      if (key !== undefined && (decision.rcode === 'NOERROR' || decision.rcode === 'NXDOMAIN')) {
        if (this.cache.size >= CACHE_MAX) this.cache = new Map();
        this.cache.set(key, decision.message);
      }
      this.observer.answer(decision.rcode);
      return decision.message;
    } catch (err) {
      this.observer.failure('internal');
      this.deps.logger.warn('DNS query failed', { id: messageId(msg), error: errorMessage(err) });
      return servfail(msg);
    }
  }

  /** An upstream's reply, or SERVFAIL. Never rejects. */
  private async forward(msg: Buffer, transport: Transport): Promise<Buffer | undefined> {
    try {
      const reply = this.deps.forwarder ? await this.deps.forwarder.forward(msg, transport) : undefined;
      this.observer.forward(reply !== undefined);
      return reply ?? servfail(msg);
    } catch (err) {
      this.observer.failure('internal');
      this.deps.logger.warn('DNS forward failed', { id: messageId(msg), error: errorMessage(err) });
      return servfail(msg);
    }
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    // Never touch the descriptor again: once node closes it, its number can be another socket's.
    this.batchFd = undefined;
    for (const sock of this.connections) sock.destroy();
    await Promise.all([
      new Promise<void>((resolve) => this.udp.close(() => resolve())),
      new Promise<void>((resolve) => this.tcp.close(() => resolve())),
    ]);
  }
}

function literalLookup(address: string, family: unknown, callback: (err: Error | null, address: string, family: number) => void): void {
  const f = net.isIP(address);
  if (f === 0) callback(new Error(`not an IP address: ${address}`), address, 0);
  else callback(null, address, f);
}

const RCODE_NAMES = ['NOERROR', 'FORMERR', 'SERVFAIL', 'NXDOMAIN', 'NOTIMP', 'REFUSED'];
const FORWARD = Symbol('forward');
