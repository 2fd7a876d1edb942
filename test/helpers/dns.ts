/** Test helpers for the DNS server: a names view from a plain map, and a small client. */
import dgram from 'node:dgram';
import net from 'node:net';
import * as packet from 'dns-packet';
import type { Addresses, ZoneView } from '../../src/dns/types';

/** A zone of single-label names (and `<name>.<zone>`) over a subnet prefix like `10.20.0.` or `fd00:20::`. */
export class MapView implements ZoneView {
  generation = 0;
  readonly names = new Map<string, string[]>();
  constructor(
    private readonly zone: string,
    private readonly subnetPrefix: string,
  ) {}
  set(name: string, ips: string[]): void {
    this.names.set(name, ips);
    this.generation++;
  }
  delete(name: string): void {
    this.names.delete(name);
    this.generation++;
  }
  lookupName(name: string): Addresses | null | undefined {
    const short = name.endsWith(`.${this.zone}`) ? name.slice(0, -this.zone.length - 1) : name;
    if (short.includes('.')) return undefined;
    const ips = this.names.get(short);
    return ips ? { v4: ips.filter((ip) => !ip.includes(':')), v6: ips.filter((ip) => ip.includes(':')) } : null;
  }
  lookupAddress(ip: string): string[] | null | undefined {
    if (!ip.startsWith(this.subnetPrefix)) return undefined;
    const out = [...this.names.entries()].filter(([, ips]) => ips.includes(ip)).map(([n]) => n);
    return out.length > 0 ? out : null;
  }
}

export function query(name: string, type: packet.RecordType = 'A', extra: Partial<packet.Packet> = {}): Buffer {
  return packet.encode({
    type: 'query',
    id: Math.floor(Math.random() * 65536),
    flags: packet.RECURSION_DESIRED,
    questions: [{ type, name, class: 'IN' }],
    ...extra,
  });
}

export function udpAsk(port: number, msg: Buffer, address = '127.0.0.1', timeoutMs = 2000): Promise<Buffer | undefined> {
  return new Promise((resolve) => {
    const s = dgram.createSocket('udp4');
    const timer = setTimeout(() => {
      s.close();
      resolve(undefined);
    }, timeoutMs);
    s.on('message', (m) => {
      clearTimeout(timer);
      s.close();
      resolve(m);
    });
    s.send(msg, port, address);
  });
}

export function tcpAsk(port: number, msgs: Buffer[], address = '127.0.0.1', timeoutMs = 2000): Promise<Buffer[]> {
  return new Promise((resolve, reject) => {
    const out: Buffer[] = [];
    let buf: Buffer = Buffer.alloc(0);
    const sock = net.connect({ host: address, port }, () => {
      for (const m of msgs) {
        const len = Buffer.alloc(2);
        len.writeUInt16BE(m.length, 0);
        sock.write(Buffer.concat([len, m]));
      }
    });
    const timer = setTimeout(() => {
      sock.destroy();
      resolve(out);
    }, timeoutMs);
    sock.on('data', (c: Buffer) => {
      buf = Buffer.concat([buf, c]);
      while (buf.length >= 2 && buf.length >= 2 + buf.readUInt16BE(0)) {
        out.push(Buffer.from(buf.subarray(2, 2 + buf.readUInt16BE(0))));
        buf = buf.subarray(2 + buf.readUInt16BE(0));
      }
      if (out.length === msgs.length) {
        clearTimeout(timer);
        sock.destroy();
        resolve(out);
      }
    });
    sock.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
  });
}

export function rcodeOf(msg: Buffer): number {
  return msg.readUInt16BE(2) & 0xf;
}
