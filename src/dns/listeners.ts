/**
 * DNS servers per local overlay, on the network's gateway addresses on `br0` inside the overlay
 * namespace: containers reach them from their own namespace (`--dns <gateway>`), also on
 * `--internal` networks, and a server hears only its own network's containers, so it answers
 * only that network's names. A dual-stack network gets one on each gateway (IPv4 and IPv6), an
 * IPv6-only one on its IPv6 gateway; all of a network's servers answer the same zone (A and
 * AAAA alike, whatever family the query came over).
 */
import type { Logger } from '../log';
import { errorMessage } from '../util/errors';
import { bindInNamespace, closeFd } from './netns-sockets';
import { DnsServer } from './server';
import type { DnsObserver, ZoneView } from './types';
import type { Forwarder } from './upstream';

export const DNS_PORT = 53;

export interface OverlayDns {
  /** Docker network id on this host. */
  networkId: string;
  /** Store key of the network (its zone). */
  networkKey: string;
  netnsPath: string;
  /** The gateway addresses to listen on: the IPv4 one, the IPv6 one, or both (never empty). */
  addresses: string[];
}

export interface DnsListenersDeps {
  zone(networkKey: string): ZoneView;
  forwarder: Forwarder;
  observer?: DnsObserver;
  logger: Logger;
  /** Port to bind (tests); 53 otherwise. */
  port?: number;
}

interface Running {
  spec: OverlayDns;
  /** The servers that started, by address (one failing does not stop the others). */
  servers: Map<string, DnsServer>;
}

const sameAddresses = (a: readonly string[], b: readonly string[]) => a.length === b.length && a.every((x, i) => x === b[i]);

export class DnsListeners {
  private readonly running = new Map<string, Running>();
  /** Serialises start/stop per network: activation and release may overlap. */
  private readonly tails = new Map<string, Promise<void>>();

  constructor(private readonly deps: DnsListenersDeps) {}

  /**
   * Starts (or restarts, when the namespace changed) the network's servers. A failure is
   * logged and reported, never thrown: names are a service on top of the network, and a
   * container must still get its network when its DNS server cannot start.
   */
  activate(spec: OverlayDns): Promise<void> {
    return this.serial(spec.networkId, async () => {
      const current = this.running.get(spec.networkId);
      if (
        current &&
        current.spec.netnsPath === spec.netnsPath &&
        sameAddresses(current.spec.addresses, spec.addresses) &&
        current.spec.networkKey === spec.networkKey &&
        current.servers.size === spec.addresses.length
      ) {
        return;
      }
      if (current) await this.stop(spec.networkId, current);
      const servers = new Map<string, DnsServer>();
      for (const address of spec.addresses) {
        const server = await this.start(spec, address);
        if (server) servers.set(address, server);
      }
      if (servers.size > 0) this.running.set(spec.networkId, { spec, servers });
    });
  }

  private async start(spec: OverlayDns, address: string): Promise<DnsServer | undefined> {
    let fds: { udpFd: number; tcpFd: number } | undefined;
    try {
      fds = bindInNamespace(spec.netnsPath, address, this.deps.port ?? DNS_PORT);
      const server = await DnsServer.start(fds, {
        view: this.deps.zone(spec.networkKey),
        forwarder: this.deps.forwarder,
        logger: this.deps.logger,
        ...(this.deps.observer ? { observer: this.deps.observer } : {}),
      });
      this.deps.logger.info('DNS listener started', { networkId: spec.networkId, address });
      return server;
    } catch (err) {
      if (fds) {
        closeFd(fds.udpFd);
        closeFd(fds.tcpFd);
      }
      this.deps.observer?.failure('listener_start');
      this.deps.logger.error('DNS listener could not start; names are not served on this address', {
        networkId: spec.networkId,
        address,
        error: errorMessage(err),
      });
      return undefined;
    }
  }

  release(networkId: string): Promise<void> {
    return this.serial(networkId, async () => {
      const current = this.running.get(networkId);
      if (current) await this.stop(networkId, current);
    });
  }

  /** Networks with a running server, with the addresses actually served (inspect). */
  list(): OverlayDns[] {
    return [...this.running.values()].map((r) => ({ ...r.spec, addresses: [...r.servers.keys()] }));
  }

  async close(): Promise<void> {
    await Promise.all([...this.running.keys()].map((id) => this.release(id)));
  }

  private async stop(networkId: string, current: Running): Promise<void> {
    this.running.delete(networkId);
    await Promise.all([...current.servers.values()].map((s) => s.close().catch(() => undefined)));
    this.deps.logger.info('DNS listener stopped', { networkId, addresses: [...current.servers.keys()] });
  }

  private serial(networkId: string, work: () => Promise<void>): Promise<void> {
    const prev = this.tails.get(networkId) ?? Promise.resolve();
    const next = prev.then(work, work);
    this.tails.set(networkId, next);
    void next.finally(() => {
      if (this.tails.get(networkId) === next) this.tails.delete(networkId);
    });
    return next;
  }
}
