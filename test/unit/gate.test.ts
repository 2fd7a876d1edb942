/**
 * The request gate (src/protocol/gate.ts): stateful requests wait for the start-up, get an id
 * of their own that is journaled with the body, and a request replayed after a crash gets the
 * body and the id of the run that was cut off. Over a real journal directory.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { silentLogger } from '../../src/log';
import { Startup, gateRoutes } from '../../src/protocol/gate';
import { InflightJournal } from '../../src/protocol/inflight';
import type { RequestContext, Route } from '../../src/protocol/server';
import { keys } from '../../src/driver/records';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'tso-gate-'));
after(() => fs.rmSync(tmp, { recursive: true, force: true }));

/** A route that records what it was called with and answers when `release` is called. */
function recordingRoute(): { route: Route; calls: { body: unknown; context?: RequestContext }[]; release: () => void } {
  const calls: { body: unknown; context?: RequestContext }[] = [];
  let release: () => void = () => undefined;
  const held = new Promise<void>((resolve) => (release = resolve));
  return {
    calls,
    release: () => release(),
    route: {
      async run(body, context) {
        calls.push({ body, ...(context ? { context } : {}) });
        await held;
        return {};
      },
    },
  };
}

function gate(dir: string, route: Route): { routes: Record<string, Route>; journal: InflightJournal; startup: Startup } {
  const journal = new InflightJournal(dir, silentLogger());
  journal.recover();
  const startup = new Startup();
  startup.done();
  const routes = gateRoutes({ 'IpamDriver.RequestAddress': route, 'Plugin.Activate': route }, { startup, journal, logger: silentLogger(), store: () => 'test' });
  return { routes, journal, startup };
}

test('gate: every stateful request gets a fresh id; a caller’s tsoverlay.request-id is not taken as it', async () => {
  const r = recordingRoute();
  r.release();
  const { routes } = gate(path.join(tmp, 'g1'), r.route);
  const body = { PoolID: '10.1.0.0/24', Options: { 'tsoverlay.request-id': 'chosen-by-caller' } };
  await routes['IpamDriver.RequestAddress']!.run(body);
  await routes['IpamDriver.RequestAddress']!.run(body);
  await routes['Plugin.Activate']!.run({});
  const [first, second, stateless] = r.calls;
  assert.deepEqual(first!.body, body, 'the body is passed on untouched');
  assert.match(first!.context!.requestId, /^[0-9a-f-]{36}$/);
  assert.notEqual(first!.context!.requestId, 'chosen-by-caller');
  assert.notEqual(second!.context!.requestId, first!.context!.requestId);
  assert.equal(stateless!.context, undefined, 'stateless methods are not gated');
});

test('gate: the empty-bodied retry after a crash runs the cut-off request with its id', async () => {
  const dir = path.join(tmp, 'g2');
  const dying = recordingRoute(); // never released: the process "dies" while it runs
  const before = gate(dir, dying.route);
  const body = { PoolID: '10.1.0.0/24', Options: {} };
  void before.routes['IpamDriver.RequestAddress']!.run(body);
  await new Promise((resolve) => setImmediate(resolve));
  const cutOff = dying.calls[0]!.context!;

  const r = recordingRoute();
  r.release();
  const afterCrash = gate(dir, r.route);
  await afterCrash.routes['IpamDriver.RequestAddress']!.run({});
  assert.deepEqual(r.calls[0], { body, context: cutOff }, 'same body, same request id');
  await afterCrash.routes['IpamDriver.RequestAddress']!.run({});
  assert.deepEqual(r.calls[1]!.body, {}, 'used up: a second empty request is not replayed');
  assert.notEqual(r.calls[1]!.context!.requestId, cutOff.requestId);
  dying.release();
});

test('gate: a stateful request waits for the start-up', async () => {
  const r = recordingRoute();
  r.release();
  const journal = new InflightJournal(path.join(tmp, 'g3'), silentLogger());
  journal.recover();
  const startup = new Startup();
  const routes = gateRoutes({ 'NetworkDriver.Join': r.route }, { startup, journal, logger: silentLogger(), store: () => 'test' });
  const running = routes['NetworkDriver.Join']!.run({ NetworkID: 'n' });
  await new Promise((resolve) => setTimeout(resolve, 20));
  assert.equal(r.calls.length, 0, 'not run before the start-up is done');
  startup.done();
  await running;
  assert.equal(r.calls.length, 1);
});

test('store keys: the parsers undo the builders and refuse other shapes', () => {
  assert.deepEqual(keys.parseEndpoint(keys.endpoint('10.20.0.0-24', 'e1')), { networkKey: '10.20.0.0-24', endpointId: 'e1' });
  assert.equal(keys.parseEndpoint('endpoints/only-network'), undefined);
  assert.equal(keys.parseEndpoint('hosts/h1'), undefined);
  assert.equal(keys.networkIdOf(keys.networkId('abc')), 'abc');
  assert.equal(keys.networkKeyOf(keys.network('vni-42')), 'vni-42');
  assert.equal(keys.hostOf(keys.host('h1')), 'h1');
  assert.equal(keys.hostOf('hosts/'), undefined);
  assert.equal(keys.vniOf(keys.vni(4242)), 4242);
  assert.equal(keys.vniOf('vni/not-a-number'), undefined);
  assert.equal(keys.vniOf('netids/4242'), undefined);
});
