import { randomBytes } from 'node:crypto';
import dgram from 'node:dgram';
import { isIPv6 } from 'node:net';
import { z } from 'zod';
import type { Logger } from '../log';
import { errorMessage } from '../util/errors';

/**
 * Liveness of another host judged over the underlay rather than through the store: the store's
 * lease says whether a host can reach the store, not whether its containers can be reached. A
 * host cut off from the store keeps answering here, so its peers keep its entries (Docker's
 * overlay and Weave likewise judge liveness from the peers). Plain UDP to the other daemon, not
 * VXLAN: what matters is that the daemon keeping the host's records current is still there.
 */
export const PROBE_PROTOCOL = 'tsoverlay-probe/1';
/** Next to Docker's gossip port (7946): open it between hosts as you open UDP 4789. */
export const DEFAULT_PROBE_PORT = 7947;
/** Datagrams above this are not probes: ignored unread, so the responder cannot be made to parse junk. */
const MAX_DATAGRAM = 512;

const requestSchema = z.object({ p: z.literal(PROBE_PROTOCOL), n: z.string().min(8).max(64), to: z.string().min(1).max(255) }).strict();
const answerSchema = z.object({ p: z.literal(PROBE_PROTOCOL), n: z.string(), name: z.string(), instance: z.string() }).strict();

export interface ProbeIdentity {
  name: string;
  /** The host's stable instance id (see the host registration): a different machine now holding the address does not pass for it. */
  instance: string;
}

function parseJson(buf: Buffer): unknown {
  if (buf.length > MAX_DATAGRAM) return undefined;
  try {
    return JSON.parse(buf.toString('utf8'));
  } catch {
    return undefined;
  }
}

function bindSocket(address: string, port: number): Promise<dgram.Socket> {
  const socket = dgram.createSocket({ type: isIPv6(address) ? 'udp6' : 'udp4', reuseAddr: false });
  return new Promise((resolve, reject) => {
    const onError = (err: Error) => {
      socket.close();
      reject(err);
    };
    socket.once('error', onError);
    socket.bind({ address, port, exclusive: true }, () => {
      socket.off('error', onError);
      resolve(socket);
    });
  });
}

export interface ProbeTarget {
  name: string;
  vtep: string;
  /** Expected instance id; hosts registered by older versions have none, and then the name alone must match. */
  instance?: string;
}

/**
 * One UDP socket on this host's VTEP address that answers other hosts' probes and sends this
 * host's own: a single port is all a firewall has to open, and nothing else listens.
 */
export class UnderlayProbe {
  private readonly pending = new Map<string, (answer: z.infer<typeof answerSchema>) => void>();

  private constructor(
    private readonly socket: dgram.Socket,
    readonly port: number,
  ) {}

  static async listen(address: string, port: number, identity: () => ProbeIdentity, logger: Logger): Promise<UnderlayProbe> {
    const socket = await bindSocket(address, port);
    const probe = new UnderlayProbe(socket, socket.address().port);
    socket.on('error', (err) => logger.warn('underlay probe socket error', { error: errorMessage(err) }));
    socket.on('message', (buf, from) => {
      const body = parseJson(buf);
      const answer = answerSchema.safeParse(body);
      if (answer.success) {
        probe.pending.get(answer.data.n)?.(answer.data);
        return;
      }
      const req = requestSchema.safeParse(body);
      const me = identity();
      // A probe for another name is not ours to answer: this address may have changed hands.
      if (!req.success || req.data.to !== me.name) return;
      const reply = Buffer.from(JSON.stringify({ p: PROBE_PROTOCOL, n: req.data.n, name: me.name, instance: me.instance }));
      socket.send(reply, from.port, from.address, (err) => {
        if (err) logger.debug('underlay probe answer not sent', { to: from.address, error: errorMessage(err) });
      });
    });
    return probe;
  }

  /** True when the target's daemon answers, as itself, within `attempts` tries of `timeoutMs` each. */
  async probe(target: ProbeTarget, port: number, opts: { attempts: number; timeoutMs: number }): Promise<boolean> {
    for (let i = 0; i < opts.attempts; i++) {
      if (await this.once(target, port, opts.timeoutMs)) return true;
    }
    return false;
  }

  private once(target: ProbeTarget, port: number, timeoutMs: number): Promise<boolean> {
    const nonce = randomBytes(12).toString('hex');
    return new Promise((resolve) => {
      const finish = (alive: boolean) => {
        clearTimeout(timer);
        this.pending.delete(nonce);
        resolve(alive);
      };
      const timer = setTimeout(() => finish(false), timeoutMs);
      this.pending.set(nonce, (answer) => {
        if (answer.name !== target.name) return;
        if (target.instance !== undefined && answer.instance !== target.instance) return;
        finish(true);
      });
      const req = Buffer.from(JSON.stringify({ p: PROBE_PROTOCOL, n: nonce, to: target.name }));
      try {
        this.socket.send(req, port, target.vtep, (err) => {
          // Unreachable network, no route: as good as no answer, but there is no point waiting.
          if (err) finish(false);
        });
      } catch {
        finish(false); // socket closed
      }
    });
  }

  close(): void {
    try {
      this.socket.close();
    } catch {
      // already closed
    }
  }
}
