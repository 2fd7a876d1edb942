/**
 * Peers in bulk against the real kernel: 10,000 remote containers programmed, verified with
 * `ip`/`bridge`, reconciled and removed; the rates are reported (and compared with `ip -batch`).
 */
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';
import { silentLogger } from '../../src/log';
import { Dataplane } from '../../src/dataplane/dataplane';
import type { Peer } from '../../src/dataplane/types';
import { bridgeIn, inNs, ipIn, registerKernelCleanup, runDir, testId } from '../helpers/kernel';

const N = 10_000;
const netnsDir = runDir('netns');
const dp = new Dataplane({ netnsDir, logger: silentLogger() });
registerKernelCleanup(async () => {
  for (const o of dp.listOverlays()) await dp.removeOverlay(o.networkIdPrefix).catch(() => undefined);
  dp.close();
});

function peers(n: number, vtepBase = 10): Peer[] {
  const out: Peer[] = [];
  for (let i = 0; i < n; i++) {
    const hi = (i >> 8) & 0xff;
    const lo = i & 0xff;
    out.push({
      ip: `10.251.${hi}.${lo}`,
      mac: `02:42:0a:fb:${hi.toString(16).padStart(2, '0')}:${lo.toString(16).padStart(2, '0')}`,
      vtep: `192.0.2.${vtepBase + (i % 50)}`,
    });
  }
  return out;
}

const countNeigh = (ns: string): number => ipIn(ns, 'neigh', 'show', 'dev', 'vxlan0').split('\n').filter((l) => l.includes('PERMANENT')).length;
const countFdb = (ns: string): number =>
  bridgeIn(ns, 'fdb', 'show', 'dev', 'vxlan0').split('\n').filter((l) => / dst 192\.0\.2\.\d+ .*self permanent/.test(l)).length;

async function timed<T>(fn: () => Promise<T>): Promise<[T, number]> {
  const t0 = process.hrtime.bigint();
  const r = await fn();
  return [r, Number(process.hrtime.bigint() - t0) / 1e9];
}

test(`${N} peers: add, repeat, list, reconcile, remove`, async (t) => {
  // A VNI of its own: vxlan devices whose sockets share the host namespace need distinct VNIs,
  // and other test files may run at the same time.
  const vni = 0x100000 + Math.floor(Math.random() * 0xfffff);
  const networkId = testId('p');
  const info = await dp.ensureOverlay({ networkId, vni, mtu: 1450, gatewayCidr: '10.251.255.254/16', mode: 'static' });
  try {
    const all = peers(N);
    const [, addS] = await timed(() => dp.applyPeers(networkId, all, []));
    t.diagnostic(`add ${N} peers: ${addS.toFixed(3)} s = ${Math.round(N / addS)} peers/s`);
    assert.equal(countNeigh(info.netnsPath), N);
    assert.equal(countFdb(info.netnsPath), N);

    const [, againS] = await timed(() => dp.applyPeers(networkId, all, []));
    t.diagnostic(`re-add ${N} peers (no-op replace): ${againS.toFixed(3)} s`);
    assert.equal(countNeigh(info.netnsPath), N);

    const [listed, listS] = await timed(() => dp.listPeers(networkId));
    t.diagnostic(`list ${N} peers: ${listS.toFixed(3)} s`);
    assert.equal(listed.length, N);
    const byIp = new Map(listed.map((p) => [p.ip, p]));
    for (const p of all) assert.deepEqual(byIp.get(p.ip), p);

    // Half the peers moved to other hosts, a quarter left.
    const desired = all.slice(0, (N * 3) / 4).map((p, i) => (i % 2 ? { ...p, vtep: p.vtep.replace(/\.(\d+)$/, (_m, d: string) => `.${Number(d) + 100}`) } : p));
    const [r, setS] = await timed(() => dp.setPeers(networkId, desired));
    t.diagnostic(`reconcile to ${desired.length} (${r.added} changed, ${r.removed} removed): ${setS.toFixed(3)} s`);
    assert.equal(r.removed, N / 4);
    assert.equal(r.added, desired.length / 2);
    const now = await dp.listPeers(networkId);
    assert.equal(now.length, desired.length);
    const nowByIp = new Map(now.map((p) => [p.ip, p]));
    for (const p of desired) assert.deepEqual(nowByIp.get(p.ip), p);
    assert.equal(countFdb(info.netnsPath), desired.length);

    const [, rmS] = await timed(() => dp.applyPeers(networkId, [], desired));
    t.diagnostic(`remove ${desired.length} peers: ${rmS.toFixed(3)} s = ${Math.round(desired.length / rmS)} peers/s`);
    assert.equal(countNeigh(info.netnsPath), 0);
    assert.equal(countFdb(info.netnsPath), 0);

    // Reference: the same adds with `ip -batch` + `bridge -batch`.
    const dir = runDir('batch');
    const ipFile = path.join(dir, 'ip.batch');
    const brFile = path.join(dir, 'bridge.batch');
    fs.writeFileSync(ipFile, all.map((p) => `neigh replace ${p.ip} lladdr ${p.mac} dev vxlan0 nud permanent\n`).join(''));
    fs.writeFileSync(brFile, all.map((p) => `fdb replace ${p.mac} dev vxlan0 dst ${p.vtep} self permanent\n`).join(''));
    const t0 = process.hrtime.bigint();
    inNs(info.netnsPath, 'ip', ['-batch', ipFile]);
    inNs(info.netnsPath, 'bridge', ['-batch', brFile]);
    const refS = Number(process.hrtime.bigint() - t0) / 1e9;
    t.diagnostic(`reference ip -batch + bridge -batch for ${N}: ${refS.toFixed(3)} s = ${Math.round(N / refS)} peers/s`);
    // What `ip` made is what the dataplane reads back, and reconciling to nothing clears it.
    assert.equal((await dp.listPeers(networkId)).length, N);
    const [cleared] = await timed(() => dp.setPeers(networkId, []));
    assert.equal(cleared.removed, N);
    assert.equal(countNeigh(info.netnsPath), 0);
    assert.equal(countFdb(info.netnsPath), 0);
  } finally {
    await dp.removeOverlay(networkId);
  }
});

test('removing a few peers (one lookup each, no table dump): only their entries go', async () => {
  const vni = 0x100000 + Math.floor(Math.random() * 0xfffff);
  const networkId = testId('f');
  const info = await dp.ensureOverlay({ networkId, vni, mtu: 1450, gatewayCidr: '10.250.9.1/24', mode: 'static' });
  const peer = (i: number, vtep = 1): Peer => ({ ip: `10.250.9.${i}`, mac: `02:42:0a:fa:09:${i.toString(16).padStart(2, '0')}`, vtep: `192.0.2.${vtep}` });
  try {
    await dp.applyPeers(networkId, [peer(10), peer(11), peer(12)], []);
    // What the bridge learned behind vxlan0 for a leaving MAC goes too.
    bridgeIn(info.netnsPath, 'fdb', 'add', peer(11).mac, 'dev', 'vxlan0', 'master', 'dynamic');
    await dp.applyPeers(networkId, [], [peer(11)]);
    assert.deepEqual((await dp.listPeers(networkId)).map((p) => p.ip).sort(), ['10.250.9.10', '10.250.9.12']);
    assert.doesNotMatch(bridgeIn(info.netnsPath, 'fdb', 'show', 'dev', 'vxlan0'), new RegExp(peer(11).mac));
    // The address now belongs to another MAC: removing the old peer leaves the new neighbour alone.
    const newer: Peer = { ip: '10.250.9.10', mac: '02:42:aa:bb:cc:dd', vtep: '192.0.2.7' };
    await dp.applyPeers(networkId, [newer], []);
    await dp.applyPeers(networkId, [], [peer(10)]);
    assert.match(ipIn(info.netnsPath, 'neigh', 'show', 'dev', 'vxlan0'), /10\.250\.9\.10 lladdr 02:42:aa:bb:cc:dd PERMANENT/);
    assert.doesNotMatch(bridgeIn(info.netnsPath, 'fdb', 'show', 'dev', 'vxlan0'), new RegExp(peer(10).mac));
    // Absent peers are fine; a peer that moved host keeps its neighbour entry.
    await dp.applyPeers(networkId, [], [peer(99)]);
    await dp.applyPeers(networkId, [peer(12, 9)], [peer(12, 1)]);
    assert.deepEqual((await dp.listPeers(networkId)).find((p) => p.ip === '10.250.9.12'), peer(12, 9));
  } finally {
    await dp.removeOverlay(networkId);
  }
});

test('vxlan0 deleted or replaced by hand: the kept index fails one update, then the device is found again', async () => {
  const vni = 0x100000 + Math.floor(Math.random() * 0xfffff);
  const networkId = testId('x');
  const spec = { networkId, vni, mtu: 1450, gatewayCidr: '10.250.10.1/24', mode: 'static' as const };
  const info = await dp.ensureOverlay(spec);
  const peer = (i: number): Peer => ({ ip: `10.250.10.${i}`, mac: `02:42:0a:fa:0a:${i.toString(16).padStart(2, '0')}`, vtep: '192.0.2.1' });
  try {
    await dp.applyPeers(networkId, [peer(10)], []);
    ipIn(info.netnsPath, 'link', 'del', 'vxlan0');
    // The index kept from ensureOverlay names a device that is gone: refused, not sent elsewhere.
    await assert.rejects(dp.applyPeers(networkId, [peer(11)], []), /ENODEV|vxlan0 missing/);
    // Looked up again: still missing, until the overlay is ensured (the reconciler's job).
    await assert.rejects(dp.applyPeers(networkId, [peer(11)], []), /vxlan0 missing/);
    await dp.ensureOverlay(spec);
    await dp.applyPeers(networkId, [peer(11)], []);
    assert.deepEqual((await dp.listPeers(networkId)).map((p) => p.ip), ['10.250.10.11']);

    // Replaced behind our back by a device of the same name: one update fails, the next finds it.
    ipIn(info.netnsPath, 'link', 'del', 'vxlan0');
    ipIn(info.netnsPath, 'link', 'add', 'vxlan0', 'type', 'vxlan', 'id', String(vni), 'dstport', '4789', 'nolearning');
    await assert.rejects(dp.applyPeers(networkId, [peer(12)], []), /ENODEV/);
    await dp.applyPeers(networkId, [peer(12)], []);
    assert.match(ipIn(info.netnsPath, 'neigh', 'show', 'dev', 'vxlan0'), /10\.250\.10\.12 lladdr 02:42:0a:fa:0a:0c PERMANENT/);
  } finally {
    await dp.removeOverlay(networkId);
  }
});
