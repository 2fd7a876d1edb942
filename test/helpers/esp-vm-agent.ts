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
 *
 * Output: one JSON line on stdout.
 */
import * as fs from 'node:fs';
import { z } from 'zod';
import { EspManager, type EspPeer } from '../../src/crypto/esp';
import { loadOrCreateHostKey } from '../../src/crypto/host-key';
import { XFRM_MSG_GETPOLICY, XFRM_MSG_GETSA, XfrmClient, parsePolicy, parseSa, probeEspSupport } from '../../src/dataplane/xfrm';

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
    default:
      throw new Error(`unknown command ${String(cmd)}`);
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
