/**
 * The checks a CreateNetwork or CreateEndpoint request passes before any store call
 * (src/driver/request-checks.ts): each refusal is a 400 that says what is wrong, and what passes
 * comes out in the form the driver writes.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { GLOBAL_ADDRESS_SPACE, LOCAL_ADDRESS_SPACE } from '../../src/driver/ipam';
import { checkCreateNetwork, checkEndpointInput, endpointMacSource, type CreateNetworkInput } from '../../src/driver/request-checks';
import { PluginError } from '../../src/util/errors';

const VTEP = '192.0.2.10';

function network(over: Partial<CreateNetworkInput> = {}): CreateNetworkInput {
  return { networkId: 'n'.repeat(64), genericOptions: {}, ipv4: [{ addressSpace: GLOBAL_ADDRESS_SPACE, pool: '10.20.0.0/24' }], ipv6: [], ...over };
}

/** A 400 PluginError whose message matches `message`. */
function badRequest(message: RegExp): (err: unknown) => boolean {
  return (err) => err instanceof PluginError && err.status === 400 && message.test(err.message);
}

test('CreateNetwork: the key is the subnet, or the VNI with -o vni; the gateway defaults to the first host', () => {
  const plain = checkCreateNetwork(network(), VTEP, true);
  assert.equal(plain.networkKey, '10.20.0.0-24');
  assert.equal(plain.v4?.gateway, '10.20.0.1');
  assert.equal(plain.v6, undefined);
  assert.deepEqual(plain.options, { mode: 'static', allowDefaultIpam: false });

  const byVni = checkCreateNetwork(network({ genericOptions: { vni: '4096' } }), VTEP, true);
  assert.equal(byVni.networkKey, 'vni-4096');

  const v6only = checkCreateNetwork(
    network({ ipv4: [], ipv6: [{ addressSpace: LOCAL_ADDRESS_SPACE, pool: 'fd00:20::/64', gateway: 'fd00:20::fe/64' }] }),
    VTEP,
    true,
  );
  assert.equal(v6only.networkKey, 'fd00:20::-64');
  assert.equal(v6only.v6?.gateway, 'fd00:20::fe');
});

test('CreateNetwork refusals: pools, IPAM drivers, options, the p2p remote', () => {
  assert.throws(() => checkCreateNetwork(network({ ipv4: [] }), VTEP, true), badRequest(/no subnet; pass --subnet/));
  assert.throws(
    () => checkCreateNetwork(network({ ipv4: [...network().ipv4, { addressSpace: GLOBAL_ADDRESS_SPACE, pool: '10.21.0.0/24' }] }), VTEP, true),
    badRequest(/one IPv4 subnet per network/),
  );
  assert.throws(
    () => checkCreateNetwork(network({ ipv4: [{ addressSpace: GLOBAL_ADDRESS_SPACE, pool: 'fd00:1::/64' }] }), VTEP, true),
    badRequest(/was given as an IPv4 subnet/),
  );
  assert.throws(
    () => checkCreateNetwork(network({ ipv4: [{ addressSpace: GLOBAL_ADDRESS_SPACE, pool: '10.20.0.0/24', gateway: '10.30.0.1/24' }] }), VTEP, true),
    badRequest(/gateway 10\.30\.0\.1 is not inside 10\.20\.0\.0\/24/),
  );
  assert.throws(
    () => checkCreateNetwork(network({ ipv6: [{ addressSpace: 'default', pool: 'fd00:20::/64' }] }), VTEP, true),
    badRequest(/use one IPAM driver for both families/),
  );
  const defaultIpam = network({ ipv4: [{ addressSpace: 'default', pool: '10.20.0.0/24' }] });
  assert.throws(() => checkCreateNetwork(defaultIpam, VTEP, true), badRequest(/distributed store every host must allocate/));
  assert.doesNotThrow(() => checkCreateNetwork(defaultIpam, VTEP, false));
  assert.doesNotThrow(() => checkCreateNetwork({ ...defaultIpam, genericOptions: { 'allow-default-ipam': 'true' } }, VTEP, true));
  assert.throws(() => checkCreateNetwork(network({ genericOptions: { vin: '1' } }), VTEP, true), badRequest(/unknown option "vin"/));
  assert.throws(
    () => checkCreateNetwork(network({ genericOptions: { mode: 'p2p', remote: VTEP } }), VTEP, true),
    badRequest(/is this host's own address/),
  );
});

test('CreateEndpoint: at least one address, and a given MAC in our form', () => {
  assert.deepEqual(checkEndpointInput({ networkId: 'n', endpointId: 'e', address: '10.20.0.2/24' }), { ip4: '10.20.0.2' });
  assert.deepEqual(checkEndpointInput({ networkId: 'n', endpointId: 'e', addressIPv6: 'fd00:20::2/64', macAddress: '02-42-0A-14-00-02' }), {
    ip6: 'fd00:20::2',
    givenMac: '02:42:0a:14:00:02',
  });
  assert.throws(() => checkEndpointInput({ networkId: 'n', endpointId: 'e' }), badRequest(/the endpoint has no address/));
  assert.throws(() => checkEndpointInput({ networkId: 'n', endpointId: 'e', address: '10.20.0.300/24' }), badRequest(/invalid IPv4 address/));
  assert.throws(
    () => checkEndpointInput({ networkId: 'n', endpointId: 'e', address: '10.20.0.2/24', macAddress: '03:00:00:00:00:01' }),
    badRequest(/invalid MAC address "03:00:00:00:00:01"/),
  );
});

test("CreateEndpoint: each family the network has, the endpoint has, inside the network's subnet", () => {
  const dual = { subnet: '10.20.0.0/24', subnet6: 'fd00:20::/64' };
  assert.deepEqual(endpointMacSource(dual, '10.20.0.2', 'fd00:20::2').ip, '10.20.0.2');
  assert.equal(endpointMacSource({ subnet: '', subnet6: 'fd00:20::/64' }, undefined, 'fd00:20::2').subnet.cidr, 'fd00:20::/64');
  assert.throws(() => endpointMacSource(dual, '10.20.0.2', undefined), badRequest(/no IPv6 address in the network's subnet fd00:20::\/64/));
  assert.throws(() => endpointMacSource({ subnet: '10.20.0.0/24' }, '10.20.0.2', 'fd00:20::2'), badRequest(/no IPv6 subnet for address fd00:20::2/));
  assert.throws(() => endpointMacSource({ subnet: '10.20.0.0/24' }, '10.21.0.2', undefined), badRequest(/10\.21\.0\.2 is not inside the network's subnet 10\.20\.0\.0\/24/));
});
