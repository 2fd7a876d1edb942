/**
 * A host that comes back after a crash withdraws its dead endpoints before it registers, and
 * publishes the revision of the last withdrawal (`settled`): a peer whose endpoint watch lags
 * behind its host watch must not advertise the dead containers meanwhile.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { PeerView } from '../../src/driver/peer-view';
import { desiredPeersOf, peerId } from '../../src/driver/desired-peers';
import { indexPeers } from '../../src/driver/miss-responder';
import { keys, type EndpointRecord, type HostRecord } from '../../src/driver/records';
import { silentLogger } from '../../src/log';

const endpoint = (id: string, ip: string, joined: boolean): EndpointRecord => ({
  id,
  networkId: 'n1',
  ip,
  mac: `02:42:0a:00:00:${id.padStart(2, '0')}`,
  locator: '192.0.2.1',
  host: 'a',
  joined,
  created: 'then',
});
const host = (settled?: number, settledIn?: Record<string, number>): HostRecord => ({
  name: 'a',
  vtep: '192.0.2.1',
  instance: 'i-a',
  ...(settled !== undefined ? { settled } : {}),
  ...(settledIn !== undefined ? { settledIn } : {}),
  started: 'now',
});
const put = (key: string, value: unknown, revision: number) => ({ type: 'put' as const, key, value: JSON.stringify(value), revision });

test('a returning host is a peer only once its start-up withdrawals are in view', () => {
  const view = new PeerView('b', silentLogger());
  view.resetEndpoints('net', [{ key: keys.endpoint('net', 'e1'), value: JSON.stringify(endpoint('1', '10.0.0.2', true)), revision: 10 }], 12);
  view.resetHosts([]);
  // The host watch is ahead: A registered at revision 21 after withdrawing e1 at revision 20.
  view.hostEvents([put(keys.host('a'), host(20), 21)]);
  assert.deepEqual(view.desiredPeers('net'), [], 'the dead container is not advertised');
  assert.equal(view.promoteSettled(), false);
  view.endpointEvents([put(keys.endpoint('net', 'e1'), endpoint('1', '10.0.0.2', false), 20)]);
  assert.equal(view.promoteSettled(), true);
  assert.deepEqual(view.desiredPeers('net'), []);
  view.endpointEvents([put(keys.endpoint('net', 'e2'), endpoint('2', '10.0.0.3', true), 30)]);
  assert.deepEqual(view.desiredPeers('net').map((p) => p.ip), ['10.0.0.3'], 'its new containers are');
});

test('a host record without settled, or one already reached, is a peer at once', () => {
  const view = new PeerView('b', silentLogger());
  view.resetEndpoints('net', [{ key: keys.endpoint('net', 'e1'), value: JSON.stringify(endpoint('1', '10.0.0.2', true)), revision: 40 }], 40);
  view.resetHosts([{ key: keys.host('a'), value: JSON.stringify(host()), revision: 41 }]);
  assert.deepEqual(view.desiredPeers('net').map((p) => p.ip), ['10.0.0.2']);
  view.hostEvents([put(keys.host('a'), host(30), 42)]);
  assert.deepEqual(view.desiredPeers('net').map((p) => p.ip), ['10.0.0.2']);
});

test('a reset current past the withdrawal lets the host in, even when the withdrawn record is gone since', () => {
  const view = new PeerView('b', silentLogger());
  view.resetHosts([]);
  // e1 was withdrawn at 20 and deleted at 25: the listed state holds only e2 (revision 10), read at 26.
  view.resetEndpoints('net', [{ key: keys.endpoint('net', 'e2'), value: JSON.stringify(endpoint('2', '10.0.0.3', true)), revision: 10 }], 26);
  view.hostEvents([put(keys.host('a'), host(20, { net: 20 }), 27)]);
  assert.deepEqual(view.desiredPeers('net').map((p) => p.ip), ['10.0.0.3']);
});

test('withdrawals in a network this host does not follow hold nothing back', () => {
  const view = new PeerView('b', silentLogger());
  view.resetHosts([]);
  view.resetEndpoints('net', [{ key: keys.endpoint('net', 'e1'), value: JSON.stringify(endpoint('1', '10.0.0.2', true)), revision: 10 }], 11);
  view.hostEvents([put(keys.host('a'), host(50, { other: 50 }), 51)]);
  assert.deepEqual(view.desiredPeers('net').map((p) => p.ip), ['10.0.0.2'], 'settledIn names only another network');
  view.hostEvents([put(keys.host('a'), host(60, { other: 50, net: 60 }), 61)]);
  assert.deepEqual(view.desiredPeers('net'), [], 'a withdrawal in a followed network not yet in view holds the host back');
  view.endpointEvents([put(keys.endpoint('net', 'e1'), endpoint('1', '10.0.0.2', false), 60)]);
  assert.equal(view.promoteSettled(), true);
});

test('events of a network no longer followed are ignored, and its endpoints forgotten', () => {
  const view = new PeerView('b', silentLogger());
  view.resetHosts([{ key: keys.host('a'), value: JSON.stringify(host()), revision: 1 }]);
  view.resetEndpoints('net', [{ key: keys.endpoint('net', 'e1'), value: JSON.stringify(endpoint('1', '10.0.0.2', true)), revision: 10 }], 11);
  assert.equal(view.knows('net'), true);
  view.forgetNetwork('net');
  assert.equal(view.knows('net'), false);
  assert.deepEqual(view.desiredPeers('net'), []);
  assert.deepEqual([...view.endpointEvents([put(keys.endpoint('net', 'e3'), endpoint('3', '10.0.0.4', true), 12)])], []);
  assert.deepEqual(view.desiredPeers('net'), [], 'a late event of a closed watch brings nothing back');
});

test('IPv6 peers: a dual-stack endpoint carries ip6 beside ip, an IPv6-only one an empty ip; both are distinct peers', () => {
  const hosts = new Map([['b', { name: 'b', vtep: '192.0.2.2', started: 'x' }]]);
  const peers = desiredPeersOf(
    [
      { ip: '10.9.0.2', ip6: 'fd00:9::2', mac: '02:42:0a:09:00:02', host: 'b', joined: true },
      { ip: '', ip6: 'fd00:7::2', mac: '06:42:00:00:00:02', host: 'b', joined: true },
      { ip: '', ip6: 'fd00:7::3', mac: '06:42:00:00:00:03', host: 'b', joined: true },
    ],
    hosts,
    'a',
  );
  assert.deepEqual(peers, [
    { ip: '10.9.0.2', ip6: 'fd00:9::2', mac: '02:42:0a:09:00:02', vtep: '192.0.2.2' },
    { ip: '', ip6: 'fd00:7::2', mac: '06:42:00:00:00:02', vtep: '192.0.2.2' },
    { ip: '', ip6: 'fd00:7::3', mac: '06:42:00:00:00:03', vtep: '192.0.2.2' },
  ]);
  assert.equal(new Set(peers.map(peerId)).size, 3);
  const index = indexPeers(peers);
  assert.equal(index.byIp.get('fd00:9::2')?.mac, '02:42:0a:09:00:02', 'an IPv6 l3 miss finds a dual-stack peer');
  assert.equal(index.byIp.get('fd00:7::3')?.mac, '06:42:00:00:00:03');
  assert.equal(index.byIp.has(''), false, 'no IPv6-only peer under an empty IPv4 address');
});

test('mixed underlays: a host whose VTEP is of the other family is refused (not a peer), once logged', () => {
  const hosts = new Map([
    ['a', { name: 'a', vtep: 'fd00:79::a', instance: 'i', started: 'now' }],
    ['b', { name: 'b', vtep: 'fd00:79::b', instance: 'i', started: 'now' }],
    ['c', { name: 'c', vtep: '10.0.0.3', instance: 'i', started: 'now' }],
  ] as [string, HostRecord][]);
  const eps = [
    { ip: '', mac: '02:42:00:00:00:01', host: 'a', joined: true },
    { ip: '', mac: '02:42:00:00:00:03', host: 'c', joined: true },
  ];
  assert.deepEqual(desiredPeersOf(eps, hosts, 'b').map((p) => p.vtep), ['fd00:79::a']);
  // Without its own record (inspect before registration) nothing is filtered.
  assert.deepEqual(desiredPeersOf(eps, new Map([...hosts].filter(([k]) => k !== 'b')), 'b').length, 2);
});

test('a dual-stack endpoint from the store keeps its IPv6 address, by reset and by event', () => {
  const view = new PeerView('b', silentLogger());
  const dual = { ...endpoint('1', '10.0.0.2', true), ip6: 'fd00::2' };
  view.resetEndpoints('net', [{ key: keys.endpoint('net', 'e1'), value: JSON.stringify(dual), revision: 5 }], 5);
  view.resetHosts([{ key: keys.host('a'), value: JSON.stringify(host()), revision: 6 }]);
  assert.deepEqual(view.desiredPeers('net').map((p) => [p.ip, p.ip6]), [['10.0.0.2', 'fd00::2']]);
  view.endpointEvents([put(keys.endpoint('net', 'e2'), { ...endpoint('2', '', true), ip6: 'fd00::3' }, 7)]);
  assert.deepEqual(
    view.desiredPeers('net').map((p) => [p.ip, p.ip6]).sort(),
    [['', 'fd00::3'], ['10.0.0.2', 'fd00::2']],
  );
});
