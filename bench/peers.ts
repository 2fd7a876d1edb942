/**
 * Benchmark 2 — peer programming rate: install N remote peers (a PERMANENT neighbour entry and a
 * `dst <vtep> self permanent` FDB entry each) into an overlay namespace made by tsoverlay's
 * dataplane, then remove them again, three ways:
 *
 *  - tsoverlay: `Dataplane.applyPeers(network, peers, [])` / `applyPeers(network, [], peers)`,
 *    the code path of the plugin (pre-encoded messages, many to a datagram);
 *  - `ip -batch` + `bridge -batch`: the same entries as one `ip` and one `bridge` process
 *    reading commands from stdin (`neigh replace … nud permanent`, `fdb replace … self permanent`);
 *  - one process per entry: `ip neigh replace …` and `bridge fdb replace …` per peer from a shell
 *    inside the namespace, on a sample of `--sample` peers, the rate extrapolated to N.
 *
 * And an IPv6 row of each of the first two: the same N peers with an IPv6 address instead of the
 * IPv4 one and an IPv6 VTEP (an IPv6-only network on an IPv6 underlay: 16-byte NDA_DST in both
 * entries), against `ip -6 -batch` + `bridge -batch` in the same run.
 *
 * Every method gets a fresh overlay namespace per repetition; the methods are interleaved in a
 * random order per repetition, and the result of each run is checked by listing the tables.
 * The command runs in a network and mount namespace of its own (see lib/isolate.ts), with the
 * node flags the plugin is deployed with (src/node-flags.ts: they change how V8 optimises the
 * encoding loops).
 *
 *   node dist/bench/peers.js [--peers 10000] [--reps 5] [--sample 500] [--json FILE]
 */
import * as path from 'node:path';
import { Dataplane } from '../src/dataplane/dataplane';
import type { Peer } from '../src/dataplane/types';
import { silentLogger } from '../src/log';
import { NODE_FLAGS } from '../src/node-flags';
import { registerCleanup, removeTree, run, runDir } from '../test/helpers/proc';
import { runIsolated } from './lib/isolate';
import { runBench } from './lib/main';
import { target } from './lib/report';
import { fmt, fmtInt, fmtRatio, median, ratio, shuffled } from './lib/stats';

type Method = 'tsoverlay' | 'batch' | 'perProcess' | 'tsoverlay6' | 'batch6';
const LABEL: Record<Method, string> = {
  tsoverlay: 'tsoverlay dataplane (`Dataplane.applyPeers`)',
  batch: '`ip -batch` + `bridge -batch`',
  perProcess: 'one `ip`/`bridge` process per entry (sampled, extrapolated)',
  tsoverlay6: 'IPv6: tsoverlay dataplane (`Dataplane.applyPeers`)',
  batch6: 'IPv6: `ip -6 -batch` + `bridge -batch`',
};
/** The IPv6 runs' VTEP, on the benchmark namespace's lo (vxlan0 binds to it: an IPv6 underlay). */
const VTEP6 = 'fd00:63::1';

/** The same peers as peerList, IPv6-only: fd00:64::<i> and a VTEP fd00:79::<1..50>. */
function peerList6(v4: readonly Peer[]): Peer[] {
  return v4.map((p, i) => ({ ip: '', ip6: `fd00:64::${(i + 1).toString(16)}`, mac: p.mac, vtep: `fd00:79::${(1 + (i % 50)).toString(16)}` }));
}

function peerList(n: number): Peer[] {
  const out: Peer[] = [];
  for (let i = 0; i < n; i++) {
    const b1 = 64 + ((i >> 16) & 0x3f);
    const b2 = (i >> 8) & 0xff;
    const b3 = i & 0xff;
    const hex = (x: number) => x.toString(16).padStart(2, '0');
    out.push({ ip: `10.${b1}.${b2}.${b3}`, mac: `02:42:0a:${hex(b1)}:${hex(b2)}:${hex(b3)}`, vtep: `192.0.2.${1 + (i % 50)}` });
  }
  return out;
}

const addIp = (p: Peer) => `neigh replace ${p.ip || p.ip6} lladdr ${p.mac} dev vxlan0 nud permanent`;
const addFdb = (p: Peer) => `fdb replace ${p.mac} dev vxlan0 dst ${p.vtep} self permanent`;
const delIp = (p: Peer) => `neigh del ${p.ip || p.ip6} dev vxlan0`;
const delFdb = (p: Peer) => `fdb del ${p.mac} dev vxlan0 dst ${p.vtep} self`;

if (runIsolated(NODE_FLAGS)) {
  runBench(
    {
      name: 'peers',
      title: '2. Peer programming rate: neighbour + FDB entries into an overlay namespace',
      description: "tsoverlay's dataplane vs ip -batch/bridge -batch vs one ip process per entry.",
      options: {
        peers: { full: 10_000, smoke: 200, help: 'remote peers installed and removed per run' },
        reps: { full: 5, smoke: 1, help: 'repetitions of every method' },
        sample: { full: 500, smoke: 50, help: 'peers run through the one-process-per-entry baseline' },
      },
    },
    async (p, ctx) => {
      const n = Math.round(p.peers);
      const sampleN = Math.min(n, Math.round(p.sample));
      const dir = runDir();
      const netnsDir = path.join(dir, 'netns');
      const dp = new Dataplane({ netnsDir, logger: silentLogger() });
      registerCleanup('peers bench dataplane', async () => {
        for (const o of dp.listOverlays()) await dp.removeOverlay(o.networkIdPrefix).catch(() => undefined);
        dp.close();
        removeTree(netnsDir);
      });
      await run(['ip', 'link', 'set', 'lo', 'up']);
      await run(['ip', '-6', 'addr', 'add', `${VTEP6}/128`, 'dev', 'lo', 'nodad']);
      const peers = peerList(n);
      const peers6 = peerList6(peers);
      const batchAdd6 = { ip: `${peers6.map(addIp).join('\n')}\n`, bridge: `${peers6.map(addFdb).join('\n')}\n` };
      const batchDel6 = { ip: `${peers6.map(delIp).join('\n')}\n`, bridge: `${peers6.map(delFdb).join('\n')}\n` };
      const sample = peers.slice(0, sampleN);
      const batchAdd = { ip: `${peers.map(addIp).join('\n')}\n`, bridge: `${peers.map(addFdb).join('\n')}\n` };
      const batchDel = { ip: `${peers.map(delIp).join('\n')}\n`, bridge: `${peers.map(delFdb).join('\n')}\n` };
      const shAdd = `${sample.map((x) => `ip ${addIp(x)}\nbridge ${addFdb(x)}`).join('\n')}\n`;
      const shDel = `${sample.map((x) => `ip ${delIp(x)}\nbridge ${delFdb(x)}`).join('\n')}\n`;

      let serial = 0;
      const fresh = async (v6: boolean) => {
        serial++;
        const networkId = `benchpeers${String(serial).padStart(4, '0')}`;
        const spec = v6
          ? { networkId, vni: 4000 + serial, mtu: 1430, gateway6Cidr: 'fd00:64::ffff/64', vtep: VTEP6, mode: 'static' as const }
          : { networkId, vni: 4000 + serial, mtu: 1450, gatewayCidr: '10.63.255.254/10', mode: 'static' as const };
        const info = await dp.ensureOverlay(spec);
        return { networkId, netns: info.netnsPath };
      };
      const check = async (networkId: string, want: number, what: string) => {
        const have = (await dp.listPeers(networkId)).length;
        if (have !== want) throw new Error(`${what}: ${have} peers in the kernel, expected ${want}`);
      };
      const seconds = (t0: bigint) => Number(process.hrtime.bigint() - t0) / 1e9;

      const rates: Record<Method, { add: number[]; remove: number[] }> = {
        tsoverlay: { add: [], remove: [] },
        batch: { add: [], remove: [] },
        perProcess: { add: [], remove: [] },
        tsoverlay6: { add: [], remove: [] },
        batch6: { add: [], remove: [] },
      };
      const reps = Math.max(1, Math.round(p.reps));
      for (let r = 1; r <= reps; r++) {
        for (const m of shuffled<Method>(['tsoverlay', 'batch', 'perProcess', 'tsoverlay6', 'batch6'])) {
          const { networkId, netns } = await fresh(m === 'tsoverlay6' || m === 'batch6');
          const count = m === 'perProcess' ? sampleN : n;
          const ns = (argv: string[], input: string) => run(['nsenter', `--net=${netns}`, '--', ...argv], { input, timeoutMs: 600_000 });
          let t0 = process.hrtime.bigint();
          if (m === 'tsoverlay') await dp.applyPeers(networkId, peers, []);
          else if (m === 'tsoverlay6') await dp.applyPeers(networkId, peers6, []);
          else if (m === 'batch') {
            await ns(['ip', '-batch', '-'], batchAdd.ip);
            await ns(['bridge', '-batch', '-'], batchAdd.bridge);
          } else if (m === 'batch6') {
            await ns(['ip', '-6', '-batch', '-'], batchAdd6.ip);
            await ns(['bridge', '-batch', '-'], batchAdd6.bridge);
          } else await ns(['sh', '-s'], shAdd);
          const addS = seconds(t0);
          await check(networkId, count, `${m} add`);
          t0 = process.hrtime.bigint();
          if (m === 'tsoverlay') await dp.applyPeers(networkId, [], peers);
          else if (m === 'tsoverlay6') await dp.applyPeers(networkId, [], peers6);
          else if (m === 'batch') {
            await ns(['ip', '-batch', '-'], batchDel.ip);
            await ns(['bridge', '-batch', '-'], batchDel.bridge);
          } else if (m === 'batch6') {
            await ns(['ip', '-6', '-batch', '-'], batchDel6.ip);
            await ns(['bridge', '-batch', '-'], batchDel6.bridge);
          } else await ns(['sh', '-s'], shDel);
          const removeS = seconds(t0);
          await check(networkId, 0, `${m} remove`);
          await dp.removeOverlay(networkId);
          rates[m].add.push(count / addS);
          rates[m].remove.push(count / removeS);
          ctx.log(`rep ${r}/${reps} ${m}: add ${count} in ${addS.toFixed(3)} s, remove in ${removeS.toFixed(3)} s`);
        }
      }

      const med = (m: Method, k: 'add' | 'remove') => median(rates[m][k]);
      // Each row against `ip -batch` of its own family.
      const base = (m: Method): Method => (m === 'tsoverlay6' || m === 'batch6' ? 'batch6' : 'batch');
      const rows = (['tsoverlay', 'batch', 'perProcess', 'tsoverlay6', 'batch6'] as Method[]).map((m) => [
        LABEL[m],
        fmtInt(med(m, 'add')),
        fmt(n / med(m, 'add'), 3),
        fmtRatio(ratio(med(m, 'add'), med(base(m), 'add'))),
        fmtInt(med(m, 'remove')),
        fmt(n / med(m, 'remove'), 3),
        fmtRatio(ratio(med(m, 'remove'), med(base(m), 'remove'))),
      ]);
      return {
        tables: [
          {
            title: `${fmtInt(n)} peers (neighbour + FDB entry each), median of ${reps} run(s)`,
            columns: ['method', 'add: peers/s', `add: s for ${fmtInt(n)}`, 'add vs ip -batch (same family)', 'remove: peers/s', `remove: s for ${fmtInt(n)}`, 'remove vs ip -batch (same family)'],
            rows,
          },
        ],
        targets: [
          target('add rate, tsoverlay / ip -batch', ratio(med('tsoverlay', 'add'), med('batch', 'add')), '>=', 1.0),
          target('IPv6 add rate, tsoverlay / ip -6 -batch', ratio(med('tsoverlay6', 'add'), med('batch6', 'add')), '>=', 1.0),
        ],
        notes: [
          `Each run starts from a fresh overlay namespace (br0 + vxlan0, made by tsoverlay's \`Dataplane.ensureOverlay\`), inside a network and mount namespace private to the benchmark; the methods run in a random order per repetition; every run is checked by listing the tables (${fmtInt(n)} peers after adding, none after removing).`,
          `tsoverlay's time covers \`applyPeers\` from the peer list (parsing, encoding, netlink I/O, the acknowledgements), run with the plugin's node flags (\`${NODE_FLAGS.join(' ')}\`); removal includes its three table dumps (IPv4 and IPv6 neighbours, FDB: it deletes only what exists). The \`ip\`/\`bridge\` times cover the processes (\`nsenter … ip -batch -\`, then \`bridge -batch -\`), their parsing of the command text and the kernel work; the text is generated beforehand.`,
          `IPv6 rows: the same ${fmtInt(n)} MACs with an IPv6 address each (fd00:64::/64) instead of the IPv4 one and an IPv6 VTEP (fd00:79::1‥32), into a vxlan0 bound to an IPv6 address (IFLA_VXLAN_LOCAL6); \`ip -6 -batch\` and \`bridge -batch\` get the same entries as text.`,
          `One process per entry: ${fmtInt(sampleN)} peers (${fmtInt(2 * sampleN)} processes, \`ip neigh replace\` and \`bridge fdb replace\` each, run by one \`sh\` in the namespace); the "s for ${fmtInt(n)}" column extrapolates that rate to ${fmtInt(n)} peers.`,
        ],
        complete: true,
      };
    },
  );
}
