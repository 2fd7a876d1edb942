/**
 * A small command-line entry point run inside the qemu VM (in a test host's network namespace)
 * by test/integration/encryption-qemu.test.ts: it drives the real key derivation, planner and
 * xfrm encoder of src/ against that namespace's kernel tables.
 *
 *   node esp-vm-agent.js probe
 *   node esp-vm-agent.js pubkey <keyDir>
 *   node esp-vm-agent.js apply <config.json>      config: {self, peers, epoch, port}
 *   node esp-vm-agent.js check <config.json>
 *   node esp-vm-agent.js dump                     raw xfrm dump messages (hex) and their parse
 *   node esp-vm-agent.js controllers <config.json> two hosts' EncryptionControllers (namespaces
 *        h1 and h2, one embedded store): activate, two rotations, a host leaving, deactivation
 *
 * Output: one JSON line on stdout.
 */
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import { z } from 'zod';
import { EncryptionController } from '../../src/crypto/controller';
import { EspManager, type EspPeer, isOurPolicy, isOurSa } from '../../src/crypto/esp';
import { loadOrCreateHostKey } from '../../src/crypto/host-key';
import { inNetnsFile } from '../../src/dataplane/netns';
import { XFRM_MSG_GETPOLICY, XFRM_MSG_GETSA, XfrmClient, parsePolicy, parseSa, probeEspSupport } from '../../src/dataplane/xfrm';
import { silentLogger } from '../../src/log';
import { openLocalStore } from '../../src/store/local';

const configSchema = z.object({
  self: z.object({ name: z.string(), instance: z.string(), keyDir: z.string(), vtep: z.string() }),
  peers: z.array(z.object({ name: z.string(), instance: z.string(), publicKey: z.string(), vtep: z.string() })),
  epoch: z.number().int().nonnegative(),
  port: z.number().int().min(1).max(65535),
});

function loadConfig(file: string): z.infer<typeof configSchema> {
  return configSchema.parse(JSON.parse(fs.readFileSync(file, 'utf8')));
}

async function main(argv: string[]): Promise<unknown> {
  const [cmd, arg] = argv;
  switch (cmd) {
    case 'probe':
      return probeEspSupport();
    case 'pubkey':
      return { publicKey: loadOrCreateHostKey(arg!).publicText };
    case 'apply':
    case 'check': {
      const c = loadConfig(arg!);
      const key = loadOrCreateHostKey(c.self.keyDir);
      const self = { identity: { name: c.self.name, instance: c.self.instance, publicKey: key.publicText }, key, vtep: c.self.vtep };
      const peers: EspPeer[] = c.peers.map((p) => ({ identity: { name: p.name, instance: p.instance, publicKey: p.publicKey }, vtep: p.vtep }));
      const xfrm = XfrmClient.open();
      try {
        const m = new EspManager(xfrm, c.port);
        if (cmd === 'check') return { differences: await m.check(self, peers, c.epoch) };
        const t0 = process.hrtime.bigint();
        const r = await m.apply(self, peers, c.epoch);
        return { ...r, ms: Number(process.hrtime.bigint() - t0) / 1e6 };
      } finally {
        xfrm.close();
      }
    }
    case 'dump': {
      const xfrm = XfrmClient.open();
      try {
        const sas = await xfrm.sock.dump(XFRM_MSG_GETSA, Buffer.alloc(0));
        const pols = await xfrm.sock.dump(XFRM_MSG_GETPOLICY, Buffer.alloc(0));
        return {
          sa: sas.map((m) => ({ type: m.type, hex: m.data.toString('hex'), parsed: { ...parseSa(m.data), key: parseSa(m.data).key.toString('hex') } })),
          policy: pols.map((m) => ({ type: m.type, hex: m.data.toString('hex'), parsed: parsePolicy(m.data) })),
        };
      } finally {
        xfrm.close();
      }
    }
    case 'controllers':
      return controllers(z.object({ storeDir: z.string(), port: z.number().int(), pingTarget: z.string(), hosts: z.array(z.object({ name: z.string(), keyDir: z.string(), vtep: z.string() })).length(2) }).parse(JSON.parse(fs.readFileSync(arg!, 'utf8'))));
    default:
      throw new Error(`unknown command ${String(cmd)}`);
  }
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

async function until(what: string, cond: () => Promise<boolean>, timeoutMs = 60_000): Promise<number> {
  const t0 = Date.now();
  while (!(await cond())) {
    if (Date.now() - t0 > timeoutMs) throw new Error(`timed out waiting for ${what}`);
    await sleep(100);
  }
  return Date.now() - t0;
}

/** Two hosts' controllers in one process sharing one store, each programming its own namespace. */
async function controllers(c: { storeDir: string; port: number; pingTarget: string; hosts: Array<{ name: string; keyDir: string; vtep: string }> }): Promise<unknown> {
  const store = await openLocalStore({ dir: c.storeDir, logger: silentLogger() });
  const log: Record<string, unknown> = {};
  const xs = c.hosts.map((h) => inNetnsFile(`/run/netns/${h.name}`, () => XfrmClient.open()));
  const ctl = c.hosts.map(
    (h, i) =>
      new EncryptionController({
        store,
        kernel: new EspManager(xs[i]!, c.port),
        key: loadOrCreateHostKey(h.keyDir),
        host: { name: h.name, instance: `${h.name}-i`, vtep: h.vtep },
        probe: () => probeEspSupport(),
        rotationIntervalSeconds: 3600,
        reconcileIntervalMs: 300,
        // Generous: an emulated VM on a loaded host may miss a keepalive of a short lease.
        leaseTtlSeconds: 15,
        logger: silentLogger(),
      }),
  );
  const counts = async (i: number): Promise<{ sas: number; policies: number }> => ({
    sas: (await xs[i]!.listSas()).filter(isOurSa).length,
    policies: (await xs[i]!.listPolicies()).filter((p) => isOurPolicy(p, c.port)).length,
  });
  try {
    for (const k of ctl) await k.start();
    await until('each host to see the other', async () => ctl.every((k) => k.participants().length === 2));
    await Promise.all(ctl.map((k) => k.activate()));
    // 10 pings/s from h1 to h2 over the encrypted overlay for the whole of both rotations.
    const ping = spawn('ip', ['netns', 'exec', 'h1', 'ping', '-i', '0.1', '-W', '10', c.pingTarget], { stdio: ['ignore', 'pipe', 'pipe'] });
    let pingOut = '';
    ping.stdout.on('data', (b: Buffer) => (pingOut += b.toString()));
    const pingDone = new Promise((r) => ping.on('close', r));
    await sleep(1500);
    log.activated = { epochs: ctl.map((k) => k.epoch), h1: await counts(0), h2: await counts(1), checks: await Promise.all(ctl.map((k) => k.check())) };
    for (const step of [1, 2]) {
      // Both hosts must have applied the current epoch before a step is allowed.
      await until('both hosts to report the current epoch', async () => (await ctl[0]!.rotateNow('cli')).rotated, 30_000);
      const ms = await until(`both hosts at epoch ${step}, kernels in sync`, async () => ctl.every((k) => k.epoch === step) && (await Promise.all(ctl.map((k) => k.check()))).every((d) => d.length === 0));
      log[`rotation${step}`] = { ms, h1: await counts(0) };
      await sleep(1000);
    }
    ping.kill('SIGINT');
    await pingDone;
    // [sent, answered] between the first and the last reply: those still in flight when SIGINT
    // stopped ping are not losses.
    const seqs = new Set([...pingOut.matchAll(/icmp_seq=(\d+)/g)].map((m) => Number(m[1])));
    log.ping = seqs.size > 0 ? [Math.max(...seqs) - Math.min(...seqs) + 1, seqs.size] : [0, 0];
    // h2's last encrypted network goes: its IPsec state goes; it still takes part (idle).
    await ctl[1]!.deactivate();
    log.deactivated = { h2: await counts(1), h1: await counts(0) };
    // h2 stops (its record goes with its lease, as when a host dies): h1 drops its SAs.
    await ctl[1]!.close(true);
    const leftMs = await until('h1 to drop h2', async () => (await counts(0)).sas === 0);
    log.left = { ms: leftMs, h1: await counts(0), participants: ctl[0]!.participants() };
    return log;
  } finally {
    for (const k of ctl) await k.close();
    for (const x of xs) x.close();
    await store.close();
  }
}

main(process.argv.slice(2)).then(
  (r) => {
    process.stdout.write(`${JSON.stringify(r)}\n`);
  },
  (e: unknown) => {
    process.stdout.write(`${JSON.stringify({ error: (e as Error).message })}\n`);
    process.exitCode = 1;
  },
);
