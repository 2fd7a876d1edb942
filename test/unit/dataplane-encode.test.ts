/** Pure dataplane encoders/decoders: no kernel needed. */
import assert from 'node:assert/strict';
import ipaddr from 'ipaddr.js';
import { describe, test } from 'node:test';
import {
  AF_BRIDGE,
  AF_INET,
  formatIPv6,
  parseIPv6,
  IFLA_INFO_DATA,
  IFLA_INFO_KIND,
  IFLA_IFNAME,
  IFLA_MTU,
  IFLA_NET_NS_FD,
  NDA_DST,
  NDA_LLADDR,
  NDA_MASTER,
  NTF_MASTER,
  NTF_SELF,
  NUD_PERMANENT,
  RTM_DELNEIGH,
  RTM_GETNEIGH,
  RTM_NEWNEIGH,
  VETH_INFO_PEER,
  attr,
  cstring,
  encodeIfInfo,
  encodeNeighMessage,
  encodeVethLinkInfo,
  NeighFields,
  formatIPv4,
  formatIPv4Number,
  formatMac,
  ipv4ToNumber,
  macFromNumber,
  macToNumber,
  parseAttrs,
  parseIPv4,
  parseIPv4Cidr,
  parseLinkMessage,
  parseMac,
  parseNeighMessage,
  parseUnicastMac,
  u32,
} from '../../src/dataplane/encode';
import { vxlanAttributes } from '../../src/dataplane/links';
import { VXLAN_PORT, vxlanIncompat } from '../../src/dataplane/overlay-check';
import { encodePeerAdd, encodePeerRemove, joinPeers, parseMiss } from '../../src/dataplane/peers';
import { networkPrefix, vethNames } from '../../src/dataplane/dataplane';
import type { LinkInfo } from '../../src/dataplane/encode';

describe('MAC and IPv4 parsing', () => {
  test('MAC round trip, case and separators', () => {
    assert.deepEqual([...parseMac('02:42:0a:14:00:05')], [2, 0x42, 0x0a, 0x14, 0, 5]);
    assert.equal(formatMac(parseMac('02:42:0A:14:00:FF')), '02:42:0a:14:00:ff');
    assert.equal(formatMac(parseMac('02-42-0a-14-00-05')), '02:42:0a:14:00:05');
  });

  test('bad MACs are rejected', () => {
    for (const bad of ['', '02:42:0a:14:00', '02:42:0a:14:00:05:06', '02:42:0g:14:00:05', '02:42-0a:14:00:05', '0242.0a14.0005', ' 02:42:0a:14:00:05']) {
      assert.throws(() => parseMac(bad), /invalid MAC/, bad);
    }
    assert.throws(() => parseMac(undefined as unknown as string), /invalid MAC/);
    assert.throws(() => parseUnicastMac('01:00:5e:00:00:01'), /multicast/);
    assert.throws(() => parseUnicastMac('ff:ff:ff:ff:ff:ff'), /multicast/);
    assert.throws(() => parseUnicastMac('00:00:00:00:00:00'), /all zeros/);
    assert.equal(formatMac(parseUnicastMac('02:42:c0:a8:00:64')), '02:42:c0:a8:00:64');
  });

  test('IPv4 round trip and strictness', () => {
    assert.deepEqual([...parseIPv4('192.168.0.100')], [192, 168, 0, 100]);
    assert.equal(formatIPv4(parseIPv4('10.20.0.5')), '10.20.0.5');
    assert.equal(ipv4ToNumber('255.255.255.255'), 0xffffffff);
    assert.equal(ipv4ToNumber('0.0.0.0'), 0);
    for (const bad of ['', '1.2.3', '1.2.3.4.5', '1.2.3.256', '01.2.3.4', '1..3.4', '1.2.3.4 ', 'a.b.c.d', '1.2.3.-4', '1.2.3.4/24', '1234.1.1.1']) {
      assert.throws(() => parseIPv4(bad), /invalid IPv4/, bad);
    }
    assert.deepEqual(parseIPv4Cidr('10.20.0.1/24'), { ip: parseIPv4('10.20.0.1'), prefix: 24 });
    assert.throws(() => parseIPv4Cidr('10.20.0.1'), /CIDR/);
    assert.throws(() => parseIPv4Cidr('10.20.0.1/33'), /CIDR/);
  });
});

describe('attributes and the veth peer', () => {
  test('attr pads to 4 bytes and records the unpadded length', () => {
    const a = attr(IFLA_IFNAME, cstring('veth'));
    assert.equal(a.length, 12);
    assert.equal(a.readUInt16LE(0), 9);
    assert.equal(a.readUInt16LE(2), IFLA_IFNAME);
    assert.equal(a.toString('utf8', 4, 9), 'veth\0');
    const m = parseAttrs(Buffer.concat([a, attr(IFLA_MTU, u32(1450))]));
    assert.equal(m.get(IFLA_MTU)!.readUInt32LE(0), 1450);
  });

  test('ifinfomsg is 16 bytes: family, pad, type, index, flags, change', () => {
    const b = encodeIfInfo({ family: 7, type: 1, index: 42, flags: 1, change: 1 });
    assert.deepEqual([...b], [7, 0, 1, 0, 42, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0]);
  });

  test('VETH_INFO_PEER holds a struct ifinfomsg followed by the peer attributes', () => {
    const li = encodeVethLinkInfo({ ifname: 've0123456789a', mtu: 1450, netNsFd: 17 });
    const info = parseAttrs(li);
    assert.equal(info.get(IFLA_INFO_KIND)!.toString(), 'veth\0');
    const data = parseAttrs(info.get(IFLA_INFO_DATA)!);
    const peer = data.get(VETH_INFO_PEER)!;
    assert.ok(peer, 'VETH_INFO_PEER present');
    assert.deepEqual([...peer.subarray(0, 16)], new Array(16).fill(0), 'a zeroed ifinfomsg comes first');
    const pa = parseAttrs(peer.subarray(16));
    assert.equal(pa.get(IFLA_IFNAME)!.toString(), 've0123456789a\0');
    assert.equal(pa.get(IFLA_MTU)!.readUInt32LE(0), 1450);
    assert.equal(pa.get(IFLA_NET_NS_FD)!.readUInt32LE(0), 17);
    // Exact layout: kind attr (12) + data attr header (4) + peer attr header (4) + ifinfomsg (16)
    // + ifname (4+14 → 20) + mtu (8) + netns fd (8).
    assert.equal(li.length, 12 + 4 + 4 + 16 + 20 + 8 + 8);
    assert.equal(li.readUInt16LE(12), 4 + 4 + 16 + 20 + 8 + 8);
    assert.equal(li.readUInt16LE(14), IFLA_INFO_DATA);
    assert.equal(li.readUInt16LE(16), 4 + 16 + 20 + 8 + 8);
    assert.equal(li.readUInt16LE(18), VETH_INFO_PEER);
  });

  test('optional peer attributes are left out', () => {
    const pa = parseAttrs(parseAttrs(parseAttrs(encodeVethLinkInfo({ ifname: 'x' })).get(IFLA_INFO_DATA)!).get(VETH_INFO_PEER)!.subarray(16));
    assert.deepEqual([...pa.keys()], [IFLA_IFNAME]);
  });
});

describe('link replies', () => {
  test('parseLinkMessage reads name, mtu, master, peer link, netnsid and vxlan data', () => {
    const port = Buffer.alloc(2);
    port.writeUInt16BE(4789);
    const vx = Buffer.concat([attr(1, u32(256)), attr(4, parseIPv4('192.0.2.1')), attr(7, Buffer.from([1])), attr(11, Buffer.from([1])), attr(13, Buffer.from([1])), attr(14, Buffer.from([1])), attr(15, port)]);
    const linkinfo = Buffer.concat([attr(IFLA_INFO_KIND, cstring('vxlan')), attr(IFLA_INFO_DATA, vx)]);
    const netnsid = Buffer.alloc(4);
    netnsid.writeInt32LE(0);
    const msg = Buffer.concat([
      encodeIfInfo({ index: 3, flags: 1 }),
      attr(IFLA_IFNAME, cstring('vxlan0')),
      attr(IFLA_MTU, u32(1450)),
      attr(1, parseMac('02:42:0a:14:00:01')),
      attr(10, u32(2)),
      attr(5, u32(9)),
      attr(37, netnsid),
      attr(18, linkinfo),
    ]);
    const l = parseLinkMessage(msg);
    assert.deepEqual(l, {
      index: 3,
      flags: 1,
      name: 'vxlan0',
      mtu: 1450,
      mac: '02:42:0a:14:00:01',
      master: 2,
      link: 9,
      linkNetnsid: 0,
      kind: 'vxlan',
      vxlan: { id: 256, local: '192.0.2.1', learning: 1, proxy: 1, l2miss: 1, l3miss: 1, port: 4789 },
    });
  });
});

describe('vxlan spec', () => {
  const spec = { name: 'vxlan0', vni: 256, mtu: 1450, proxy: true, learning: true };
  test('attributes: id, big-endian dstport, proxy/l2miss/l3miss/learning, optional local/group/link', () => {
    const v = vxlanAttributes(spec);
    assert.equal(v.id, 256);
    assert.deepEqual([...v.port!], [0x12, 0xb5]);
    assert.equal(v.proxy, 1);
    assert.equal(v.l2miss, 1);
    assert.equal(v.l3miss, 1);
    assert.equal(v.learning, 1);
    assert.equal(v.local, undefined);
    const m = vxlanAttributes({ ...spec, proxy: false, local: '192.0.2.1', group: '239.1.1.1', underlayIndex: 4 });
    assert.equal(m.proxy, 0);
    assert.equal(m.l2miss, 0);
    assert.deepEqual([...m.local!], [192, 0, 2, 1]);
    assert.deepEqual([...m.group!], [239, 1, 1, 1]);
    assert.equal(m.link, 4);
  });

  test('mismatch: compatible device accepted, others named', () => {
    const good: LinkInfo = {
      index: 3,
      name: 'vxlan0',
      flags: 0,
      kind: 'vxlan',
      linkNetnsid: 0,
      vxlan: { id: 256, port: VXLAN_PORT, proxy: 1, l2miss: 1, l3miss: 1, learning: 1 },
    };
    assert.equal(vxlanIncompat(good, spec), undefined);
    assert.match(vxlanIncompat({ ...good, vxlan: { ...good.vxlan, id: 999 } }, spec)!, /vni/);
    assert.match(vxlanIncompat({ ...good, vxlan: { ...good.vxlan, port: 4790 } }, spec)!, /dstport/);
    assert.match(vxlanIncompat({ ...good, vxlan: { ...good.vxlan, proxy: 0 } }, spec)!, /proxy/);
    assert.match(vxlanIncompat({ ...good, vxlan: { ...good.vxlan, local: '192.0.2.9' } }, spec)!, /local/);
    assert.match(vxlanIncompat({ ...good, kind: 'bridge' }, spec)!, /kind/);
    const { linkNetnsid: _drop, ...inside } = good;
    assert.match(vxlanIncompat(inside, spec)!, /host namespace/);
  });
});

describe('neighbour messages', () => {
  test('generic encoder layout and parse round trip', () => {
    const ip = parseIPv4('10.20.0.5');
    const mac = parseMac('02:42:0a:14:00:05');
    const m = encodeNeighMessage(RTM_NEWNEIGH, 0x500, { family: AF_INET, ifindex: 3, state: NUD_PERMANENT, flags: 0 }, [
      [NDA_DST, ip],
      [NDA_LLADDR, mac],
    ]);
    assert.equal(m.length, 48);
    assert.equal(m.readUInt32LE(0), 48);
    assert.equal(m.readUInt16LE(4), RTM_NEWNEIGH);
    assert.equal(m.readUInt16LE(6), 0x500);
    const e = parseNeighMessage(m.subarray(16));
    assert.equal(e.family, AF_INET);
    assert.equal(e.ifindex, 3);
    assert.equal(e.state, NUD_PERMANENT);
    assert.deepEqual(e.dst, ip);
    assert.deepEqual(e.lladdr, mac);
  });

  test('NeighFields reads the same message as numbers, and resets what a message lacks', () => {
    const m = encodeNeighMessage(RTM_NEWNEIGH, 0, { family: AF_INET, ifindex: 3, state: NUD_PERMANENT, flags: NTF_SELF }, [
      [NDA_DST, parseIPv4('10.20.0.5')],
      [NDA_LLADDR, parseMac('02:42:0a:14:00:ff')],
      [NDA_MASTER, u32(9)],
    ]);
    const e = new NeighFields().read(m.subarray(16));
    assert.deepEqual({ ...e }, { family: AF_INET, ifindex: 3, state: NUD_PERMANENT, flags: NTF_SELF, dst4: ipv4ToNumber('10.20.0.5'), dst6: undefined, mac: macToNumber('02:42:0a:14:00:ff'), master: true });
    const bare = encodeNeighMessage(RTM_NEWNEIGH, 0, { family: AF_INET, ifindex: 4, state: 0, flags: 0 }, []);
    assert.deepEqual({ ...e.read(bare.subarray(16)) }, { family: AF_INET, ifindex: 4, state: 0, flags: 0, dst4: -1, dst6: undefined, mac: -1, master: false });
    assert.equal(formatIPv4Number(ipv4ToNumber('255.0.10.1')), '255.0.10.1');
    assert.equal(formatMac(macFromNumber(macToNumber('FF-42-0a-14-00-05'))), 'ff:42:0a:14:00:05');
    assert.throws(() => macToNumber('02:42:0a:14:00'), /invalid MAC/);
  });

  test('peer add = neighbour replace + self FDB replace, byte for byte', () => {
    const p = { ip: '10.20.0.5', mac: '02:42:0A:14:00:05', vtep: '192.0.2.10' };
    const [neigh, fdb] = encodePeerAdd(7, p);
    const ip = parseIPv4(p.ip);
    const mac = parseMac(p.mac);
    const vtep = parseIPv4(p.vtep);
    assert.deepEqual(neigh, encodeNeighMessage(RTM_NEWNEIGH, 0x500, { family: AF_INET, ifindex: 7, state: NUD_PERMANENT, flags: 0 }, [[NDA_DST, ip], [NDA_LLADDR, mac]]));
    assert.deepEqual(fdb, encodeNeighMessage(RTM_NEWNEIGH, 0x500, { family: AF_BRIDGE, ifindex: 7, state: NUD_PERMANENT, flags: NTF_SELF }, [[NDA_LLADDR, mac], [NDA_DST, vtep]]));
  });

  test('peer remove = neighbour delete + self FDB delete for the VTEP + learned master delete', () => {
    const p = { ip: '10.20.0.5', mac: '02:42:0a:14:00:05', vtep: '192.0.2.10' };
    const [n, s, m] = encodePeerRemove(7, p);
    const ip = parseIPv4(p.ip);
    const mac = parseMac(p.mac);
    assert.deepEqual(n, encodeNeighMessage(RTM_DELNEIGH, 0, { family: AF_INET, ifindex: 7, state: 0, flags: 0 }, [[NDA_DST, ip]]));
    assert.deepEqual(s, encodeNeighMessage(RTM_DELNEIGH, 0, { family: AF_BRIDGE, ifindex: 7, state: 0, flags: NTF_SELF }, [[NDA_LLADDR, mac], [NDA_DST, parseIPv4(p.vtep)]]));
    assert.deepEqual(m, encodeNeighMessage(RTM_DELNEIGH, 0, { family: AF_BRIDGE, ifindex: 7, state: 0, flags: NTF_MASTER }, [[NDA_LLADDR, mac]]));
  });

  test('IPv6: neighbour replace per family, FDB dst of 16 bytes for an IPv6 VTEP, byte for byte', () => {
    const p = { ip: '10.20.0.5', ip6: 'FD00:20:0::5', mac: '02:42:0a:14:00:05', vtep: 'fd00:79::a' };
    const [n4, n6, fdb] = encodePeerAdd(7, p);
    const mac = parseMac(p.mac);
    const flags = 0x500;
    assert.deepEqual(n4, encodeNeighMessage(RTM_NEWNEIGH, flags, { family: AF_INET, ifindex: 7, state: NUD_PERMANENT, flags: 0 }, [[NDA_DST, parseIPv4(p.ip)], [NDA_LLADDR, mac]]));
    assert.deepEqual(n6, encodeNeighMessage(RTM_NEWNEIGH, flags, { family: 10, ifindex: 7, state: NUD_PERMANENT, flags: 0 }, [[NDA_DST, parseIPv6('fd00:20::5')], [NDA_LLADDR, mac]]));
    assert.deepEqual(fdb, encodeNeighMessage(RTM_NEWNEIGH, flags, { family: AF_BRIDGE, ifindex: 7, state: NUD_PERMANENT, flags: NTF_SELF }, [[NDA_LLADDR, mac], [NDA_DST, parseIPv6(p.vtep)]]));
    // IPv6-only: no IPv4 neighbour.
    const only = encodePeerAdd(7, { ip: '', ip6: 'fd00:20::5', mac: p.mac, vtep: '192.0.2.1' });
    assert.equal(only.length, 2);
    assert.deepEqual(only[0], n6);
    const [d4, d6, self, master] = encodePeerRemove(7, p);
    assert.deepEqual(d4, encodeNeighMessage(RTM_DELNEIGH, 0, { family: AF_INET, ifindex: 7, state: 0, flags: 0 }, [[NDA_DST, parseIPv4(p.ip)]]));
    assert.deepEqual(d6, encodeNeighMessage(RTM_DELNEIGH, 0, { family: 10, ifindex: 7, state: 0, flags: 0 }, [[NDA_DST, parseIPv6('fd00:20::5')]]));
    assert.deepEqual(self, encodeNeighMessage(RTM_DELNEIGH, 0, { family: AF_BRIDGE, ifindex: 7, state: 0, flags: NTF_SELF }, [[NDA_LLADDR, mac], [NDA_DST, parseIPv6(p.vtep)]]));
    assert.deepEqual(master, encodeNeighMessage(RTM_DELNEIGH, 0, { family: AF_BRIDGE, ifindex: 7, state: 0, flags: NTF_MASTER }, [[NDA_LLADDR, mac]]));
    assert.throws(() => encodePeerAdd(1, { ip: '', mac: p.mac, vtep: '192.0.2.1' }), /IPv4/);
    assert.throws(() => encodePeerAdd(1, { ip: '', ip6: 'fe80::1%eth0', mac: p.mac, vtep: '192.0.2.1' }), /IPv6/);
    assert.throws(() => encodePeerAdd(1, { ip: '', ip6: '10.0.0.1', mac: p.mac, vtep: '192.0.2.1' }), /IPv6/);
  });

  test('joinPeers joins a container\'s IPv4 and IPv6 neighbours by MAC; IPv6-only peers have no ip', () => {
    const fdb = [
      { mac: '02:00:00:00:00:01', vtep: 'fd00:79::a', self: true, master: false, permanent: true, dynamic: false },
      { mac: '02:00:00:00:00:02', vtep: 'fd00:79::b', self: true, master: false, permanent: true, dynamic: false },
    ];
    const peers = joinPeers(
      [
        { ip: 'fd00:20::1', mac: '02:00:00:00:00:01', permanent: true, state: NUD_PERMANENT },
        { ip: '10.0.0.1', mac: '02:00:00:00:00:01', permanent: true, state: NUD_PERMANENT },
        { ip: 'fd00:20::2', mac: '02:00:00:00:00:02', permanent: true, state: NUD_PERMANENT },
      ],
      fdb,
    );
    assert.deepEqual(peers, [
      { ip: '10.0.0.1', ip6: 'fd00:20::1', mac: '02:00:00:00:00:01', vtep: 'fd00:79::a' },
      { ip: '', ip6: 'fd00:20::2', mac: '02:00:00:00:00:02', vtep: 'fd00:79::b' },
    ]);
  });

  test('vxlan attributes: an IPv6 VTEP/group go out as LOCAL6/GROUP6', () => {
    const v = vxlanAttributes({ name: 'vxlan0', vni: 5, mtu: 1430, proxy: false, learning: true, local: 'fd00:79::1', group: 'ff05::100' });
    assert.deepEqual(v.local6, parseIPv6('fd00:79::1'));
    assert.deepEqual(v.group6, parseIPv6('ff05::100'));
    assert.equal(v.local, undefined);
    assert.equal(v.group, undefined);
  });

  test('invalid peers are rejected before anything is encoded', () => {
    assert.throws(() => encodePeerAdd(1, { ip: '10.0.0.256', mac: '02:42:0a:00:00:01', vtep: '192.0.2.1' }), /IPv4/);
    assert.throws(() => encodePeerAdd(1, { ip: '10.0.0.1', mac: 'nope', vtep: '192.0.2.1' }), /MAC/);
    assert.throws(() => encodePeerAdd(1, { ip: '10.0.0.1', mac: '02:42:0a:00:00:01', vtep: 'host' }), /IPv4/);
  });

  test('joinPeers keeps PERMANENT neighbours whose MAC has a permanent self FDB entry', () => {
    const peers = joinPeers(
      [
        { ip: '10.0.0.2', mac: '02:42:0a:00:00:02', permanent: true, state: NUD_PERMANENT },
        { ip: '10.0.0.3', mac: '02:42:0a:00:00:03', permanent: false, state: 2 },
        { ip: '10.0.0.4', mac: '02:42:0a:00:00:04', permanent: true, state: NUD_PERMANENT },
      ],
      [
        { mac: '02:42:0a:00:00:02', vtep: '192.0.2.1', self: true, master: false, permanent: true, dynamic: false },
        { mac: '02:42:0a:00:00:03', vtep: '192.0.2.1', self: true, master: false, permanent: true, dynamic: false },
        { mac: '02:42:0a:00:00:04', self: false, master: true, permanent: false, dynamic: true },
        { mac: '00:00:00:00:00:00', vtep: '192.0.2.9', self: true, master: false, permanent: true, dynamic: false },
      ],
    );
    assert.deepEqual(peers, [{ ip: '10.0.0.2', mac: '02:42:0a:00:00:02', vtep: '192.0.2.1' }]);
  });
});

describe('names', () => {
  test('veth names from the endpoint id fit IFNAMSIZ', () => {
    const id = 'f3a9c1d2e4b5a6978877665544332211f3a9c1d2e4b5a6978877665544332211';
    assert.deepEqual(vethNames(id), { srcName: 'vcf3a9c1d2e4b', bridgePortName: 'vef3a9c1d2e4b' });
    assert.ok(vethNames(id).srcName.length <= 15);
    assert.throws(() => vethNames('../x'), /invalid endpoint id/);
    assert.throws(() => vethNames(''), /invalid endpoint id/);
  });

  test('network prefix is the first 10 characters', () => {
    assert.equal(networkPrefix('0123456789abcdef'), '0123456789');
    assert.equal(networkPrefix('short'), 'short');
    assert.throws(() => networkPrefix('a/b'), /invalid network id/);
  });
});

describe('miss notifications', () => {
  // Captured from this kernel: RTM_GETNEIGH payloads vxlan0 (ifindex 3) sent for an l2miss and an IPv6 l3miss.
  const l2 = Buffer.from('02000000030000000400000108000a00000000000a00020002420afaca08000008000700000000001400030000000000ec706866ec70686600000000', 'hex');
  const l3v6 = Buffer.from('0a000000030000000400000108000a000000000014000100fe8000000000000000420afffefaca0208000700000000011400030000000000da706866da70686600000000', 'hex');

  test('an l2miss carries only the MAC', () => {
    assert.deepEqual(parseMiss(RTM_GETNEIGH, l2), { kind: 'l2', mac: '02:42:0a:fa:ca:08', ifindex: 3 });
  });

  test('an IPv4 l3miss carries only the address', () => {
    const m = encodeNeighMessage(RTM_GETNEIGH, 0, { family: AF_INET, ifindex: 3, state: 4, flags: 0 }, [[NDA_DST, parseIPv4('10.250.201.9')]]);
    assert.deepEqual(parseMiss(RTM_GETNEIGH, m.subarray(16)), { kind: 'l3', ip: '10.250.201.9', ifindex: 3 });
  });

  test('an IPv6 l3miss (family AF_INET6, 16-byte NDA_DST) carries the address; neighbour events are not misses', () => {
    assert.deepEqual(parseMiss(RTM_GETNEIGH, l3v6), { kind: 'l3', ip: 'fe80::42:aff:fefa:ca02', ifindex: 3 });
    assert.equal(parseMiss(RTM_NEWNEIGH, l2), undefined);
  });
});

describe('IPv6 text', () => {
  test('parseIPv6/formatIPv6 agree with ipaddr.js (RFC 5952) and refuse what is not an IPv6 address', () => {
    const cases = ['::', '::1', '1::', 'fd00:79::a', 'FD00:0:0:0:0:0:0:1', '2001:db8:0:0:1:0:0:1', '2001:db8::1:0:0:1', 'fe80::42:aff:fefa:ca02', '1:2:3:4:5:6:7:8', '1:0:0:2:0:0:0:3', '::ffff:10.0.0.1', 'ff05::79'];
    for (let i = 0; i < 200; i++) {
      const g = Array.from({ length: 8 }, () => (Math.random() < 0.4 ? 0 : Math.floor(Math.random() * 0x10000)).toString(16));
      cases.push(g.join(':'));
    }
    for (const c of cases) {
      const want = ipaddr.IPv6.parse(c);
      assert.deepEqual([...parseIPv6(c)], want.toByteArray(), c);
      if (!c.includes('.')) assert.equal(formatIPv6(parseIPv6(c)), want.toRFC5952String(), c);
    }
    for (const bad of ['', ':', ':::', '1:::2', '1::2::3', '1:2:3:4:5:6:7:8:9', '1:2:3:4:5:6:7', '12345::', 'g::', '1:', ':1', '10.0.0.1', 'fe80::1%eth0', '::1:']) {
      assert.throws(() => parseIPv6(bad), /invalid IPv6/, bad);
    }
  });
});
