/**
 * The dataplane against the real kernel: what a host must look like (a namespace per network
 * with br0 holding the gateway and vxlan0 made from the host namespace, a veth pair per
 * container, peers as PERMANENT neighbour and `self permanent` FDB entries), observed with
 * `ip`/`bridge` inside the namespace files. Fake VTEPs are 192.0.2.x (never reached: nothing in
 * these tests floods to a remote), container addresses 10.250.x.x inside throwaway namespaces.
 */
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, test } from 'node:test';
import { silentLogger } from '../../src/log';
import { Dataplane, vethNames } from '../../src/dataplane/dataplane';
import { createVeth, ensureVxlan, getLink } from '../../src/dataplane/links';
import { NlSocket } from '../../src/dataplane/nlsock';
import { hostNetnsFd, openNetns, withNetns } from '../../src/dataplane/netns';
import { parseMac } from '../../src/dataplane/encode';
import type { OverlaySpec } from '../../src/dataplane/types';
import {
  RUN_PREFIX,
  bridgeIn,
  eventually,
  hostLinkNames,
  inNs,
  ipIn,
  links,
  mountinfo,
  registerKernelCleanup,
  run,
  runDir,
  testId,
  testLinkName,
  throwawayNetns,
} from '../helpers/kernel';

const netnsDir = runDir('netns');
const dataplanes: Dataplane[] = [];
function newDataplane(): Dataplane {
  const dp = new Dataplane({ netnsDir, logger: silentLogger() });
  dataplanes.push(dp);
  return dp;
}
registerKernelCleanup(async () => {
  for (const dp of dataplanes) {
    for (const o of dp.listOverlays()) {
      await dp.removeOverlay(o.networkIdPrefix).catch(() => undefined);
    }
    dp.close();
  }
});

let subnet = 0;
function spec(over: Partial<OverlaySpec> = {}): OverlaySpec {
  subnet++;
  return {
    networkId: testId('n'),
    vni: 256,
    mtu: 1450,
    gatewayCidr: `10.250.${subnet}.1/24`,
    mode: 'static',
    ...over,
  };
}

function link(netnsFile: string | undefined, name: string) {
  return links(netnsFile).find((l) => l.ifname === name);
}

function assertGone(netnsPath: string): void {
  assert.equal(fs.existsSync(netnsPath), false, `${netnsPath} still exists`);
  assert.ok(!mountinfo().includes(netnsPath), `${netnsPath} still mounted`);
}

describe('dataplane (real kernel)', () => {
  test('ensureOverlay builds the overlay namespace: br0 with the gateway, vxlan0 from the host namespace', async () => {
    const dp = newDataplane();
    const s = spec();
    const info = await dp.ensureOverlay(s);
    try {
      assert.equal(info.epoch, 1);
      assert.equal(path.basename(info.netnsPath), `1-${s.networkId.slice(0, 10)}`);
      assert.equal(path.dirname(info.netnsPath), netnsDir);
      assert.ok(mountinfo().includes(info.netnsPath), 'namespace file is a mount');

      const vx = ipIn(info.netnsPath, '-d', 'link', 'show', 'vxlan0');
      for (const want of ['vxlan id 256', 'dstport 4789', ' proxy', ' l2miss', ' l3miss', 'mtu 1450', 'master br0', 'link-netnsid']) {
        assert.ok(vx.includes(want), `ip -d link show vxlan0 lacks ${JSON.stringify(want)}:\n${vx}`);
      }
      assert.match(vx, /state UNKNOWN|LOWER_UP/);
      const br = ipIn(info.netnsPath, 'addr', 'show', 'br0');
      assert.match(br, new RegExp(`inet 10\\.250\\.${subnet}\\.1/24 `));
      assert.match(br, /mtu 1450/);
      assert.match(br, /<[^>]*\bUP\b/);
      const lo = ipIn(info.netnsPath, 'link', 'show', 'lo');
      assert.match(lo, /<[^>]*\bUP\b/);
      assert.deepEqual(dp.findOverlay(s.networkId), info);
      assert.ok(dp.listOverlays().some((o) => o.netnsPath === info.netnsPath && o.networkIdPrefix === s.networkId.slice(0, 10)));
    } finally {
      await dp.removeOverlay(s.networkId);
    }
    assertGone(info.netnsPath);
  });

  test('ensureOverlay is idempotent, also from a new process-like instance', async () => {
    const dp = newDataplane();
    const s = spec();
    const a = await dp.ensureOverlay(s);
    try {
      const before = links(a.netnsPath);
      const b = await dp.ensureOverlay(s);
      assert.deepEqual(b, a);
      const after = links(a.netnsPath);
      assert.deepEqual(
        after.map((l) => [l.ifname, l.ifindex]),
        before.map((l) => [l.ifname, l.ifindex]),
      );
      assert.equal(after.filter((l) => l.ifname === 'vxlan0').length, 1);
      assert.equal(after.filter((l) => l.ifname === 'br0').length, 1);
      assert.equal(ipIn(a.netnsPath, '-4', 'addr', 'show', 'br0').match(/inet /g)?.length, 1);

      // A restarted plugin (new instance, empty caches) finds and reuses the same namespace.
      const dp2 = newDataplane();
      assert.deepEqual(dp2.findOverlay(s.networkId), a);
      const c = await dp2.ensureOverlay(s);
      assert.deepEqual(c, a);
      assert.deepEqual(
        links(a.netnsPath).map((l) => [l.ifname, l.ifindex]),
        before.map((l) => [l.ifname, l.ifindex]),
      );
      dp2.close();

      // Concurrent calls for one network are serialised, not raced.
      const all = await Promise.all([dp.ensureOverlay(s), dp.ensureOverlay(s), dp.ensureOverlay(s)]);
      for (const x of all) assert.deepEqual(x, a);
      assert.equal(links(a.netnsPath).length, before.length);
    } finally {
      await dp.removeOverlay(s.networkId);
    }
    assertGone(a.netnsPath);
  });

  test('an incompatible vxlan0 (other VNI/port, made inside the namespace) is replaced', async () => {
    const dp = newDataplane();
    const s = spec();
    const info = await dp.ensureOverlay(s);
    try {
      ipIn(info.netnsPath, 'link', 'del', 'vxlan0');
      ipIn(info.netnsPath, 'link', 'add', 'vxlan0', 'type', 'vxlan', 'id', '999', 'dstport', '4790');
      ipIn(info.netnsPath, 'link', 'set', 'vxlan0', 'master', 'br0');
      const wrong = ipIn(info.netnsPath, '-d', 'link', 'show', 'vxlan0');
      assert.match(wrong, /vxlan id 999/);
      assert.ok(!wrong.includes('link-netnsid'));

      await dp.ensureOverlay(s);
      const vx = ipIn(info.netnsPath, '-d', 'link', 'show', 'vxlan0');
      assert.match(vx, /vxlan id 256 /);
      assert.match(vx, /dstport 4789 /);
      assert.match(vx, /link-netnsid/);
      assert.match(vx, /master br0/);

      // A changed MTU is applied in place (same device).
      const idx = link(info.netnsPath, 'vxlan0')!.ifindex;
      await dp.ensureOverlay({ ...s, mtu: 1400 });
      assert.equal(link(info.netnsPath, 'vxlan0')!.ifindex, idx);
      assert.equal(link(info.netnsPath, 'vxlan0')!.mtu, 1400);
      assert.equal(link(info.netnsPath, 'br0')!.mtu, 1400);
      // A changed VNI replaces it.
      await dp.ensureOverlay({ ...s, vni: 257 });
      assert.match(ipIn(info.netnsPath, '-d', 'link', 'show', 'vxlan0'), /vxlan id 257 /);
    } finally {
      await dp.removeOverlay(s.networkId);
    }
    assertGone(info.netnsPath);
  });

  test('modes: p2p sets the remote, multicast the group and underlay device; local = vtep', async () => {
    const dp = newDataplane();
    // p2p: the remote is loopback so that nothing can leave the machine.
    const p = spec({ mode: 'p2p', remote: '127.0.0.1', vtep: '127.0.0.1' });
    const pi = await dp.ensureOverlay(p);
    try {
      const vx = ipIn(pi.netnsPath, '-d', 'link', 'show', 'vxlan0');
      assert.match(vx, /remote 127\.0\.0\.1 /);
      assert.match(vx, /local 127\.0\.0\.1 /);
      const data = link(pi.netnsPath, 'vxlan0')!.linkinfo!.info_data!;
      assert.equal(data.proxy, undefined, 'p2p floods ARP to the remote: no proxy');
      assert.equal(data.l2miss, undefined);
      assert.equal(data.learning, true);
      assert.match(bridgeIn(pi.netnsPath, 'fdb', 'show', 'dev', 'vxlan0'), /00:00:00:00:00:00 dst 127\.0\.0\.1 .*self permanent/);
      // Reconciling peers leaves the default entry alone.
      await dp.setPeers(p.networkId, []);
      assert.match(bridgeIn(pi.netnsPath, 'fdb', 'show', 'dev', 'vxlan0'), /00:00:00:00:00:00 dst 127\.0\.0\.1/);
    } finally {
      await dp.removeOverlay(p.networkId);
    }
    assertGone(pi.netnsPath);

    // multicast: the underlay is a port-less bridge in the host namespace, so IGMP goes nowhere.
    const dummy = testLinkName('dm');
    run('ip', ['link', 'add', dummy, 'type', 'bridge']);
    try {
      run('ip', ['addr', 'add', '192.0.2.77/32', 'dev', dummy]);
      run('ip', ['link', 'set', dummy, 'up']);
      const m = spec({ mode: 'multicast', group: '239.1.1.1', vtep: '192.0.2.77' });
      const mi = await dp.ensureOverlay(m);
      try {
        const vx = ipIn(mi.netnsPath, '-d', 'link', 'show', 'vxlan0');
        assert.match(vx, /group 239\.1\.1\.1 /);
        // The underlay lives in the host namespace, so `ip` inside shows it by index.
        assert.match(vx, new RegExp(`dev if${link(undefined, dummy)!.ifindex} `));
        assert.match(vx, /local 192\.0\.2\.77 /);
        await assert.rejects(dp.ensureOverlay({ ...m, networkId: testId('n'), group: '10.0.0.1' }), /multicast group/);
      } finally {
        await dp.removeOverlay(m.networkId);
      }
      assertGone(mi.netnsPath);
    } finally {
      run('ip', ['link', 'del', dummy], { allowFail: true });
    }
  });

  test('attachEndpoint: veth pair with names, MTU, MAC, master; idempotent; detach removes it', async () => {
    const dp = newDataplane();
    const s = spec();
    const info = await dp.ensureOverlay(s);
    const endpointId = testId('e');
    const mac = '02:42:0a:fa:00:02';
    try {
      const ep = await dp.attachEndpoint({ networkId: s.networkId, endpointId, mac, mtu: 1450 });
      assert.deepEqual(ep, vethNames(endpointId));
      assert.equal(ep.srcName, `vc${endpointId.slice(0, 11)}`);
      assert.equal(ep.bridgePortName, `ve${endpointId.slice(0, 11)}`);
      const h = link(undefined, ep.srcName)!;
      assert.ok(h, 'host end exists in the plugin namespace');
      assert.equal(h.mtu, 1450);
      assert.equal(h.address, mac);
      assert.equal(h.linkinfo?.info_kind, 'veth');
      const b = link(info.netnsPath, ep.bridgePortName)!;
      assert.ok(b, 'bridge end exists in the overlay namespace');
      assert.equal(b.mtu, 1450);
      assert.equal(b.master, 'br0');
      assert.ok(b.flags.includes('UP'));
      assert.equal(await dp.countAttachedEndpoints(s.networkId), 1);

      // Repeat: same devices.
      const again = await dp.attachEndpoint({ networkId: s.networkId, endpointId, mac, mtu: 1450 });
      assert.deepEqual(again, ep);
      assert.equal(link(undefined, ep.srcName)!.ifindex, h.ifindex);
      assert.equal(link(info.netnsPath, ep.bridgePortName)!.ifindex, b.ifindex);
      assert.equal(await dp.countAttachedEndpoints(s.networkId), 1);

      // Docker moved the host end into the container: a repeated attach is still fine.
      const sandbox = throwawayNetns('sandbox1');
      run('ip', ['link', 'set', ep.srcName, 'netns', sandbox]);
      assert.equal(link(undefined, ep.srcName), undefined);
      assert.deepEqual(await dp.attachEndpoint({ networkId: s.networkId, endpointId, mac, mtu: 1450 }), ep);
      assert.equal(link(info.netnsPath, ep.bridgePortName)!.ifindex, b.ifindex);
      assert.ok(link(sandbox, ep.srcName), 'the moved end was left alone');

      // Detach deletes whichever end is left (here only the bridge end is ours to see).
      await dp.detachEndpoint(s.networkId, endpointId);
      assert.equal(link(info.netnsPath, ep.bridgePortName), undefined);
      assert.equal(link(sandbox, ep.srcName), undefined, 'deleting one end deletes the pair');
      assert.equal(await dp.countAttachedEndpoints(s.networkId), 0);
      await dp.detachEndpoint(s.networkId, endpointId); // missing = fine

      // A second endpoint, detached while both ends are still in place.
      const e2 = testId('e');
      const ep2 = await dp.attachEndpoint({ networkId: s.networkId, endpointId: e2, mac: '02:42:0a:fa:00:03', mtu: 1450 });
      await dp.detachEndpoint(s.networkId, e2);
      assert.equal(link(undefined, ep2.srcName), undefined);
      assert.equal(link(info.netnsPath, ep2.bridgePortName), undefined);
    } finally {
      await dp.removeOverlay(s.networkId);
    }
    assertGone(info.netnsPath);
  });

  test('a broken pair (bridge end gone, stale host end) is rebuilt', async () => {
    const dp = newDataplane();
    const s = spec();
    const info = await dp.ensureOverlay(s);
    const endpointId = testId('e');
    try {
      const ep = await dp.attachEndpoint({ networkId: s.networkId, endpointId, mac: '02:42:0a:fa:00:02', mtu: 1450 });
      // Replace the pair by an unrelated one with the same host-side name.
      ipIn(info.netnsPath, 'link', 'del', ep.bridgePortName);
      run('ip', ['link', 'add', ep.srcName, 'type', 'bridge']);
      await dp.attachEndpoint({ networkId: s.networkId, endpointId, mac: '02:42:0a:fa:00:02', mtu: 1450 });
      assert.equal(link(undefined, ep.srcName)?.linkinfo?.info_kind, 'veth');
      assert.equal(link(info.netnsPath, ep.bridgePortName)?.master, 'br0');
    } finally {
      await dp.removeOverlay(s.networkId);
    }
    assertGone(info.netnsPath);
    assert.ok(!hostLinkNames().some((n) => n.startsWith(`vc${RUN_PREFIX}`)), 'host ends went with the namespace');
  });

  test('peers: PERMANENT neighbour + self FDB entries, removal, learned entries, reconcile', async () => {
    const dp = newDataplane();
    const s = spec({ gatewayCidr: '10.20.0.1/24' });
    const info = await dp.ensureOverlay(s);
    const peer = { ip: '10.20.0.5', mac: '02:42:0a:14:00:05', vtep: '192.0.2.10' };
    const neigh = (): string => ipIn(info.netnsPath, 'neigh', 'show', 'dev', 'vxlan0');
    const fdb = (): string => bridgeIn(info.netnsPath, 'fdb', 'show', 'dev', 'vxlan0');
    // iproute2 prints link-netnsid for entries of a device whose socket is in another namespace.
    const fdbLine = /^02:42:0a:14:00:05 dst 192\.0\.2\.10 (link-netnsid \d+ )?self permanent$/m;
    try {
      await dp.applyPeers(s.networkId, [peer], []);
      assert.match(neigh(), /^10\.20\.0\.5 lladdr 02:42:0a:14:00:05 PERMANENT/m);
      assert.match(fdb(), fdbLine);
      await dp.applyPeers(s.networkId, [peer], []); // repeat: fine, no duplicates
      assert.equal(neigh().trim().split('\n').length, 1);
      assert.equal(fdb().split('\n').filter((l) => l.includes('02:42:0a:14:00:05')).length, 1);
      assert.deepEqual(await dp.listPeers(s.networkId), [peer]);

      // The peer moved to another host: replace, not duplicate.
      const moved = { ...peer, vtep: '192.0.2.11' };
      await dp.applyPeers(s.networkId, [moved], [peer]);
      assert.deepEqual(await dp.listPeers(s.networkId), [moved]);
      assert.ok(!fdb().includes('192.0.2.10'));

      // A stale removal (old owner of the IP) must not remove the new owner's neighbour.
      const newOwner = { ip: '10.20.0.5', mac: '02:42:0a:14:00:99', vtep: '192.0.2.12' };
      await dp.applyPeers(s.networkId, [newOwner], []);
      await dp.applyPeers(s.networkId, [], [moved]);
      assert.match(neigh(), /10\.20\.0\.5 lladdr 02:42:0a:14:00:99 PERMANENT/);
      assert.deepEqual(await dp.listPeers(s.networkId), [newOwner]);

      // Removal takes a dynamically learned bridge entry for the MAC with it.
      bridgeIn(info.netnsPath, 'fdb', 'add', newOwner.mac, 'dev', 'vxlan0', 'master', 'dynamic');
      assert.match(fdb(), /02:42:0a:14:00:99 master br0/);
      await dp.applyPeers(s.networkId, [], [newOwner]);
      assert.equal(neigh().trim(), '');
      assert.ok(!fdb().includes('02:42:0a:14:00:99'), fdb());
      await dp.applyPeers(s.networkId, [], [newOwner]); // repeat: fine
      assert.deepEqual(await dp.listPeers(s.networkId), []);

      // Reconcile: stale entries go, missing ones come, matching ones stay.
      ipIn(info.netnsPath, 'neigh', 'add', '10.20.0.77', 'lladdr', '02:42:0a:14:00:4d', 'dev', 'vxlan0', 'nud', 'permanent');
      bridgeIn(info.netnsPath, 'fdb', 'add', '02:42:0a:14:00:4d', 'dev', 'vxlan0', 'dst', '192.0.2.99', 'self', 'permanent');
      const desired = [peer, { ip: '10.20.0.6', mac: '02:42:0a:14:00:06', vtep: '192.0.2.10' }];
      await dp.setPeers(s.networkId, desired);
      const sortPeers = (x: typeof desired) => [...x].sort((a, b) => a.ip.localeCompare(b.ip));
      assert.deepEqual(sortPeers(await dp.listPeers(s.networkId)), sortPeers(desired));
      assert.ok(!neigh().includes('10.20.0.77'));
      assert.ok(!fdb().includes('192.0.2.99'));
      const r = await dp.setPeers(s.networkId, desired);
      assert.equal(r.added, 0);
      assert.equal(r.removed, 0);

      await assert.rejects(dp.applyPeers(s.networkId, [{ ip: '10.20.0.300', mac: peer.mac, vtep: peer.vtep }], []), /invalid IPv4/);
    } finally {
      await dp.removeOverlay(s.networkId);
    }
    assertGone(info.netnsPath);
  });

  test('removeOverlay leaves no namespace file, no mount, no links; repeated is fine', async () => {
    const dp = newDataplane();
    const s = spec();
    const info = await dp.ensureOverlay(s);
    const ep = await dp.attachEndpoint({ networkId: s.networkId, endpointId: testId('e'), mac: '02:42:0a:fa:00:09', mtu: 1450 });
    assert.ok(hostLinkNames().includes(ep.srcName));
    await dp.removeOverlay(s.networkId);
    assertGone(info.netnsPath);
    assert.ok(!hostLinkNames().includes(ep.srcName), 'host end removed with the overlay');
    assert.equal(dp.findOverlay(s.networkId), undefined);
    assert.ok(!dp.listOverlays().some((o) => o.networkIdPrefix === s.networkId.slice(0, 10)));
    await dp.removeOverlay(s.networkId);
    await assert.rejects(dp.attachEndpoint({ networkId: s.networkId, endpointId: testId('e'), mac: '02:42:0a:fa:00:09', mtu: 1450 }), /no overlay/);
    assert.deepEqual(await dp.listPeers(s.networkId), []);
    assert.equal(await dp.countAttachedEndpoints(s.networkId), 0);

    // The next overlay for the same network gets a new epoch.
    const again = await dp.ensureOverlay(s);
    assert.equal(again.epoch, 2);
    assert.equal(path.basename(again.netnsPath), `2-${s.networkId.slice(0, 10)}`);
    await dp.removeOverlay(s.networkId);
    assertGone(again.netnsPath);
  });

  test('failures roll back: bogus VNI, invalid MAC/MTU, enslave failures', async () => {
    const dp = newDataplane();
    const bad = spec({ vni: 0x1000000 });
    await assert.rejects(dp.ensureOverlay(bad), /ERANGE|EINVAL|vxlan/);
    assert.equal(dp.findOverlay(bad.networkId), undefined);
    assert.ok(!dp.listOverlays().some((o) => o.networkIdPrefix === bad.networkId.slice(0, 10)), 'no namespace file');
    assert.ok(!mountinfo().includes(bad.networkId.slice(0, 10)), 'no mount');

    const s = spec();
    const info = await dp.ensureOverlay(s);
    try {
      const before = links(info.netnsPath).map((l) => l.ifname);
      const hostBefore = hostLinkNames();
      const endpointId = testId('e');
      await assert.rejects(dp.attachEndpoint({ networkId: s.networkId, endpointId, mac: '02:42:zz:00:00:01', mtu: 1450 }), /invalid MAC/);
      await assert.rejects(dp.attachEndpoint({ networkId: s.networkId, endpointId, mac: '01:00:5e:00:00:01', mtu: 1450 }), /multicast/);
      await assert.rejects(dp.attachEndpoint({ networkId: s.networkId, endpointId, mac: '02:42:0a:fa:00:02', mtu: 10 }), /MTU/);
      assert.deepEqual(links(info.netnsPath).map((l) => l.ifname), before);
      assert.deepEqual(hostLinkNames(), hostBefore);

      // Mid-way failures: enslaving the new pair fails (no such bridge), and neither end is left
      // (the kernel unregisters the pair before it answers); a VXLAN device that cannot be
      // attached is deleted again.
      const host = new NlSocket();
      const nsFd = openNetns(info.netnsPath);
      const ns = withNetns(nsFd, () => new NlSocket());
      try {
        const names = vethNames(testId('e'));
        await assert.rejects(
          createVeth(ns, hostNetnsFd(), { hostName: names.srcName, peerName: names.bridgePortName, mtu: 1450, mac: parseMac('02:42:0a:fa:00:07'), masterIndex: 999999 }),
        );
        assert.equal(await getLink(host, names.srcName), undefined);
        assert.equal(await getLink(ns, names.bridgePortName), undefined);

        ipIn(info.netnsPath, 'link', 'del', 'vxlan0');
        await assert.rejects(ensureVxlan(host, ns, nsFd, { name: 'vxlan0', vni: 300, mtu: 1450, proxy: true, learning: true }, 999999));
        assert.equal(await getLink(ns, 'vxlan0'), undefined);
      } finally {
        host.close();
        ns.close();
        fs.closeSync(nsFd);
      }
      // ensureOverlay repairs what was removed by hand.
      await dp.ensureOverlay(s);
      assert.match(ipIn(info.netnsPath, '-d', 'link', 'show', 'vxlan0'), /vxlan id 256 .*dstport 4789/s);
    } finally {
      await dp.removeOverlay(s.networkId);
    }
    assertGone(info.netnsPath);
  });

  test('miss mode: L3 and L2 misses of vxlan0 reach the watcher', async () => {
    const dp = newDataplane();
    const s = spec({ mode: 'miss', gatewayCidr: '10.250.201.1/24' });
    const info = await dp.ensureOverlay(s);
    try {
      assert.match(ipIn(info.netnsPath, '-d', 'link', 'show', 'vxlan0'), /proxy l2miss l3miss/);
      const misses: unknown[] = [];
      const stop = await dp.watchMisses(s.networkId, (m) => misses.push({ kind: m.kind, ...(m.kind === 'l3' ? { ip: m.ip } : { mac: m.mac }) }));
      const a = await dp.attachEndpoint({ networkId: s.networkId, endpointId: testId('a'), mac: '02:42:0a:fa:c9:02', mtu: 1450 });
      const ns = throwawayNetns('miss-a');
      run('ip', ['link', 'set', a.srcName, 'netns', ns]);
      ipIn(ns, 'addr', 'add', '10.250.201.2/24', 'dev', a.srcName);
      ipIn(ns, 'link', 'set', a.srcName, 'up');
      // L3: an ARP request for an unknown address is proxied by vxlan0, which has no neighbour for it.
      inNs(ns, 'ping', ['-c', '1', '-W', '1', '10.250.201.9'], { allowFail: true });
      // L2: a frame to a MAC vxlan0 has no FDB entry for (the container knows the MAC statically).
      ipIn(ns, 'neigh', 'add', '10.250.201.8', 'lladdr', '02:42:0a:fa:c9:08', 'dev', a.srcName, 'nud', 'permanent');
      inNs(ns, 'ping', ['-c', '1', '-W', '1', '10.250.201.8'], { allowFail: true });
      assert.ok(await eventually(() => misses.length >= 2, 3000), JSON.stringify(misses));
      assert.ok(misses.some((m) => JSON.stringify(m) === JSON.stringify({ kind: 'l3', ip: '10.250.201.9' })), JSON.stringify(misses));
      assert.ok(misses.some((m) => JSON.stringify(m) === JSON.stringify({ kind: 'l2', mac: '02:42:0a:fa:c9:08' })), JSON.stringify(misses));
      stop();
    } finally {
      await dp.removeOverlay(s.networkId);
    }
    assertGone(info.netnsPath);
  });

  test('two endpoints in one overlay ping each other through br0 (and the gateway)', async () => {
    const dp = newDataplane();
    const s = spec({ gatewayCidr: '10.250.200.1/24' });
    const info = await dp.ensureOverlay(s);
    try {
      const a = await dp.attachEndpoint({ networkId: s.networkId, endpointId: testId('a'), mac: '02:42:0a:fa:c8:02', mtu: 1450 });
      const b = await dp.attachEndpoint({ networkId: s.networkId, endpointId: testId('b'), mac: '02:42:0a:fa:c8:03', mtu: 1450 });
      const nsA = throwawayNetns('ping-a');
      const nsB = throwawayNetns('ping-b');
      for (const [ns, ep, ip] of [
        [nsA, a, '10.250.200.2'],
        [nsB, b, '10.250.200.3'],
      ] as const) {
        run('ip', ['link', 'set', ep.srcName, 'netns', ns]);
        ipIn(ns, 'addr', 'add', `${ip}/24`, 'dev', ep.srcName);
        ipIn(ns, 'link', 'set', ep.srcName, 'up');
        ipIn(ns, 'link', 'set', 'lo', 'up');
      }
      const ping = (ns: string, ip: string): string => inNs(ns, 'ping', ['-c', '2', '-i', '0.2', '-W', '2', ip]);
      assert.match(ping(nsA, '10.250.200.3'), / 0% packet loss/);
      assert.match(ping(nsB, '10.250.200.2'), / 0% packet loss/);
      assert.match(ping(nsA, '10.250.200.1'), / 0% packet loss/);
      assert.equal(await dp.countAttachedEndpoints(s.networkId), 2);
    } finally {
      await dp.removeOverlay(s.networkId);
    }
    assertGone(info.netnsPath);
    assert.ok(await eventually(() => !hostLinkNames().some((n) => n.startsWith(`vc${RUN_PREFIX}`))));
  });
});
