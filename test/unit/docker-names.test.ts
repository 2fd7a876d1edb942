/**
 * The names publisher's full re-read against an engine whose state moves while it reads: a
 * stand-in for the few Docker API calls it makes (the publisher's logic is what is tested
 * here; the real engine is in test/e2e/names.test.ts), over a real embedded store.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import type Dockerode from 'dockerode';
import { RecordStore } from '../../src/driver/record-store';
import { keys } from '../../src/driver/records';
import { silentLogger } from '../../src/log';
import { DockerNames } from '../../src/names/docker-names';
import { namesKeys, namesRecordSchema } from '../../src/names/records';
import { openLocalStore } from '../../src/store/local';

const dirs: string[] = [];
after(() => {
  for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
});

const CONTAINER = 'c'.repeat(64);
const NETWORK = 'n'.repeat(64);
const ENDPOINT = 'e'.repeat(64);

/** The engine as the publisher sees it: a container list, inspect, and a network's scope. */
function engine(state: { running: boolean; onList?: () => Promise<void> }): Dockerode {
  const api = {
    listContainers: async () => {
      const listed = state.running ? [{ Id: CONTAINER }] : [];
      await state.onList?.();
      return listed;
    },
    getContainer: (id: string) => ({
      inspect: async () => {
        if (id !== CONTAINER) throw Object.assign(new Error('no such container'), { statusCode: 404 });
        return {
          Id: CONTAINER,
          Name: '/web',
          State: { Running: state.running },
          NetworkSettings: { Networks: { demo: { NetworkID: NETWORK, EndpointID: ENDPOINT, Aliases: ['www'] } } },
        };
      },
    }),
    getNetwork: () => ({ inspect: async () => ({ Scope: 'local' }) }),
  };
  return api as unknown as Dockerode;
}

test('a container started while the full re-read lists containers keeps the names its event published', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tso-names-'));
  dirs.push(dir);
  const store = await openLocalStore({ dir, logger: silentLogger() });
  const records = new RecordStore(store);
  await records.put(keys.networkId(NETWORK), { networkKey: '10.9.0.0-24', host: 'h1', created: new Date().toISOString() });
  const key = namesKeys.endpoint('10.9.0.0-24', ENDPOINT);

  const state: { running: boolean; onList?: () => Promise<void> } = { running: false };
  const names = new DockerNames(engine(state), records, { hostName: 'h1' }, silentLogger());
  // The list is read while the container is not running yet; it starts, and its start event is
  // handled, before the re-read walks what it found.
  state.onList = async () => {
    state.running = true;
    await (names as unknown as { syncContainer(id: string): Promise<void> }).syncContainer(CONTAINER);
    assert.ok(await records.get(namesRecordSchema, key), 'published by the start event');
  };
  await names.syncAll('test');
  const rec = await records.get(namesRecordSchema, key);
  assert.ok(rec, 'still published after the full re-read');
  assert.deepEqual(rec.value.names, ['web', 'www']);

  // And one that really stopped is removed by the next re-read.
  state.onList = undefined;
  state.running = false;
  await names.syncAll('test');
  assert.equal(await records.get(namesRecordSchema, key), undefined);
  await names.close();
  await store.close();
});
