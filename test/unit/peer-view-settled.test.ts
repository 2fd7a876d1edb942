/**
 * A host that comes back after a crash withdraws its dead endpoints before it registers, and
 * publishes the revision of the last withdrawal (`settled`): a peer whose endpoint watch lags
 * behind its host watch must not advertise the dead containers meanwhile.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { PeerView, desiredPeersOf } from '../../src/driver/peer-view';
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
const host = (settled?: number): HostRecord => ({ name: 'a', vtep: '192.0.2.1', instance: 'i-a', ...(settled !== undefined ? { settled } : {}), started: 'now' });
const put = (key: string, value: unknown, revision: number) => ({ type: 'put' as const, key, value: JSON.stringify(value), revision });

test('a returning host is a peer only once its start-up withdrawals are in view', () => {
  const view = new PeerView('b', silentLogger());
  view.resetEndpoints([{ key: keys.endpoint('net', 'e1'), value: JSON.stringify(endpoint('1', '10.0.0.2', true)), revision: 10 }]);
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
  view.resetEndpoints([{ key: keys.endpoint('net', 'e1'), value: JSON.stringify(endpoint('1', '10.0.0.2', true)), revision: 40 }]);
  view.resetHosts([{ key: keys.host('a'), value: JSON.stringify(host()), revision: 41 }]);
  assert.deepEqual(view.desiredPeers('net').map((p) => p.ip), ['10.0.0.2']);
  view.hostEvents([put(keys.host('a'), host(30), 42)]);
  assert.deepEqual(view.desiredPeers('net').map((p) => p.ip), ['10.0.0.2']);
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
