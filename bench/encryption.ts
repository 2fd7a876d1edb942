/**
 * Benchmark 7 — encryption: what IPsec ESP costs in throughput. Two host namespaces on a test
 * underlay; iperf3 (TCP, one stream) from one to the other in clear and with ESP in transport
 * mode between them (`rfc4106(gcm(aes))`, the SAs and policies tsoverlay's encrypted networks
 * use, set by hand with `ip xfrm`), alternating, in the same run. The figure is the ratio
 * encrypted / clear.
 *
 * Where the kernel cannot do ESP with AES-GCM (the probe of src/dataplane/xfrm.ts, the same
 * one `network create -o encrypted` runs), the benchmark measures nothing and says why: a
 * throughput emulated in software (qemu without KVM) would not be a performance figure.
 *
 *   node dist/bench/encryption.js [--seconds 10] [--rounds 3]
 */
import { randomBytes } from 'node:crypto';
import os from 'node:os';
import { probeEspSupport } from '../src/dataplane/xfrm';
import { createUnderlay, type UnderlayHost } from '../test/helpers/hosts';
import { spawnTracked, sleep } from '../test/helpers/proc';
import { runBench } from './lib/main';
import { fmt, fmtRatio, ratio, summarize } from './lib/stats';

const PORT = 5211;

/** Receiver-side bits per second of an `iperf3 -J` TCP test. */
function receivedBps(json: string): number {
  const data = JSON.parse(json.slice(json.indexOf('{'))) as { error?: string; end?: { sum_received?: { bits_per_second?: number } } };
  if (data.error) throw new Error(`iperf3: ${data.error}`);
  const bps = data.end?.sum_received?.bits_per_second;
  if (typeof bps !== 'number') throw new Error(`iperf3 gave no result: ${json.slice(0, 300)}`);
  return bps;
}

async function iperf(from: UnderlayHost, to: UnderlayHost, seconds: number): Promise<number> {
  const server = spawnTracked(['nsenter', `--net=${to.netnsPath}`, '--', 'iperf3', '-s', '-1', '-p', String(PORT), '-B', to.address], { name: 'iperf3-server' });
  try {
    await server.waitForOutput(/Server listening/, 10_000);
    const r = await from.exec(['iperf3', '-c', to.address, '-p', String(PORT), '-t', String(seconds), '-J'], { timeoutMs: (seconds + 30) * 1000 });
    return receivedBps(r.stdout);
  } finally {
    await server.stop();
  }
}

/** ESP in transport mode both ways between a and b (as `ip xfrm`), or its removal. */
async function esp(a: UnderlayHost, b: UnderlayHost, on: boolean): Promise<void> {
  const keys = [randomBytes(20).toString('hex'), randomBytes(20).toString('hex')];
  for (const [self, peer] of [
    [a, b],
    [b, a],
  ] as const) {
    if (!on) {
      await self.exec(['ip', 'xfrm', 'policy', 'flush']);
      await self.exec(['ip', 'xfrm', 'state', 'flush']);
      continue;
    }
    const dirs: [string, string, string, string][] = [
      [self.address, peer.address, self === a ? '0x1001' : '0x1002', self === a ? keys[0]! : keys[1]!],
      [peer.address, self.address, self === a ? '0x1002' : '0x1001', self === a ? keys[1]! : keys[0]!],
    ];
    for (const [src, dst, spi, key] of dirs) {
      await self.exec(['ip', 'xfrm', 'state', 'add', 'src', src, 'dst', dst, 'proto', 'esp', 'spi', spi, 'reqid', '1', 'mode', 'transport', 'aead', 'rfc4106(gcm(aes))', `0x${key}`, '128']);
    }
    await self.exec(['ip', 'xfrm', 'policy', 'add', 'src', self.address, 'dst', peer.address, 'dir', 'out', 'tmpl', 'proto', 'esp', 'reqid', '1', 'mode', 'transport']);
    await self.exec(['ip', 'xfrm', 'policy', 'add', 'src', peer.address, 'dst', self.address, 'dir', 'in', 'tmpl', 'proto', 'esp', 'reqid', '1', 'mode', 'transport']);
  }
}

runBench(
  {
    name: 'encryption',
    title: '7. Encryption: ESP throughput against clear',
    description: 'iperf3 between two namespaces with ESP (rfc4106(gcm(aes)), transport mode) and without, alternating; skipped, with the reason, where the kernel cannot do ESP.',
    options: {
      seconds: { full: 10, smoke: 2, help: 'seconds per iperf3 run' },
      rounds: { full: 3, smoke: 1, help: 'runs of each (alternating)' },
    },
  },
  async (p, ctx) => {
    const support = await probeEspSupport();
    if (!support.ok) {
      const reason = `this kernel (${os.release()}) cannot do IPsec ESP: missing ${support.missing.join('; ')}`;
      ctx.log(`skipped: ${reason}`);
      return {
        tables: [{ title: 'ESP throughput', columns: ['measurement', 'result'], rows: [['encrypted / clear iperf3 throughput', `skipped: ${reason}`]] }],
        targets: [],
        notes: [
          `Skipped: ${reason}${support.detail ? ` (${support.detail})` : ''}. The probe is the one \`docker network create -o encrypted\` runs (src/dataplane/xfrm.ts probeEspSupport); encrypted networks are refused on this kernel. Their functional test runs under qemu (test/integration/encryption-qemu.test.ts), where throughput is emulated and is not reported.`,
        ],
        complete: true,
        skipped: reason,
      };
    }
    ctx.log('ESP available: two namespaces on a test underlay');
    const underlay = await createUnderlay({ hosts: 2 });
    const [a, b] = underlay.hosts as [UnderlayHost, UnderlayHost];
    const clear: number[] = [];
    const encrypted: number[] = [];
    try {
      for (let round = 0; round < p.rounds; round++) {
        for (const on of round % 2 === 0 ? [false, true] : [true, false]) {
          await esp(a, b, on);
          await sleep(200);
          const bps = await iperf(a, b, p.seconds);
          (on ? encrypted : clear).push(bps);
          ctx.log(`round ${round + 1}: ${on ? 'ESP' : 'clear'} ${fmt(bps / 1e9, 2)} Gbit/s`);
        }
      }
      await esp(a, b, false);
    } finally {
      await underlay.teardown();
    }
    const c = summarize(clear);
    const e = summarize(encrypted);
    const r = ratio(e.median, c.median);
    return {
      tables: [
        {
          title: `iperf3 TCP, one stream, ${p.seconds} s per run, ${p.rounds} run(s) each, alternating`,
          columns: ['path', 'median (Gbit/s)', 'runs (Gbit/s)'],
          rows: [
            ['clear', fmt(c.median / 1e9, 2), clear.map((x) => fmt(x / 1e9, 2)).join(', ')],
            ['ESP rfc4106(gcm(aes)), transport', fmt(e.median / 1e9, 2), encrypted.map((x) => fmt(x / 1e9, 2)).join(', ')],
          ],
        },
      ],
      // No target: the ratio is the kernel's, the bound an encrypted tsoverlay network can approach.
      targets: [],
      notes: [`Two namespaces of a test underlay (veth pairs on a bridge); SAs and policies set with \`ip xfrm\`. Ratio ${fmtRatio(r)}: what the kernel's ESP costs on this machine, the bound an encrypted tsoverlay network can approach.`],
      complete: clear.length === p.rounds && encrypted.length === p.rounds,
    };
  },
);
