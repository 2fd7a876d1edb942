/**
 * A DNS load generator: A queries for random names from a list, over UDP, with a fixed number
 * of queries in flight, for a fixed time. Counts answers (NOERROR with the expected address
 * count) and measures each query's time from send to reply.
 */
import dgram from 'node:dgram';
import * as packet from 'dns-packet';

export interface LoadResult {
  sent: number;
  answered: number;
  /** Replies that were not a NOERROR answer with at least one A record. */
  wrong: number;
  lost: number;
  seconds: number;
  latenciesMs: number[];
}

export async function dnsLoad(opts: { address: string; port: number; names: string[]; inFlight: number; seconds: number; onePass?: boolean }): Promise<LoadResult> {
  const sock = dgram.createSocket('udp4');
  await new Promise<void>((r) => sock.bind(0, '127.0.0.1', () => r()));
  const sentAt = new Map<number, bigint>();
  const res: LoadResult = { sent: 0, answered: 0, wrong: 0, lost: 0, seconds: 0, latenciesMs: [] };
  let nextId = 0;
  let stopping = false;
  const t0 = process.hrtime.bigint();
  const deadline = t0 + BigInt(Math.round(opts.seconds * 1e9));
  let done!: () => void;
  const finished = new Promise<void>((r) => (done = r));

  const send = (): void => {
    if (stopping) return;
    // Skip ids still waiting (after a wrap-around).
    let id = nextId;
    for (let i = 0; i < 65536 && sentAt.has(id); i++) id = (id + 1) & 0xffff;
    nextId = (id + 1) & 0xffff;
    if (opts.onePass && res.sent >= opts.names.length) {
      stopping = true;
      if (sentAt.size === 0) done();
      return;
    }
    const name = opts.onePass ? opts.names[res.sent]! : opts.names[Math.floor(Math.random() * opts.names.length)]!;
    const q = packet.encode({ type: 'query', id, flags: packet.RECURSION_DESIRED, questions: [{ type: 'A', name, class: 'IN' }] });
    sentAt.set(id, process.hrtime.bigint());
    res.sent++;
    sock.send(q, opts.port, opts.address);
  };

  sock.on('message', (msg) => {
    const now = process.hrtime.bigint();
    if (msg.length < 12) return;
    const id = msg.readUInt16BE(0);
    const t = sentAt.get(id);
    if (t === undefined) return;
    sentAt.delete(id);
    res.latenciesMs.push(Number(now - t) / 1e6);
    const ancount = msg.readUInt16BE(6);
    if ((msg.readUInt16BE(2) & 0xf) === 0 && ancount >= 1) res.answered++;
    else res.wrong++;
    if (now >= deadline) stopping = true;
    if (stopping) {
      if (sentAt.size === 0) done();
      return;
    }
    send();
  });
  // Queries lost (none expected on loopback) are resent after a second so the window stays full.
  const sweeper = setInterval(() => {
    const now = process.hrtime.bigint();
    for (const [id, t] of sentAt) {
      if (now - t > 1_000_000_000n) {
        sentAt.delete(id);
        res.lost++;
        send();
      }
    }
    if (stopping && sentAt.size === 0) done();
    if (now > deadline + 2_000_000_000n) {
      stopping = true;
      done();
    }
  }, 200);
  for (let i = 0; i < opts.inFlight; i++) send();
  await finished;
  clearInterval(sweeper);
  res.seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  sock.close();
  return res;
}
