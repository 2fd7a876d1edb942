import { after, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtemp, readFile, readdir, rm, stat, writeFile } from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';

import { silentLogger } from '../../src/log';
import { LOCAL_LOCK_FILE, LOCAL_STORE_FILE, LocalStore, StoreLockedError } from '../../src/store/local';
import { openStore } from '../../src/store/open';
import type { Store } from '../../src/store/store';
import { StoreFixture, WatchRecorder, runStoreContract, waitFor } from '../helpers/store-contract';

const logger = silentLogger();
const PREFIX = 'tsoverlay/v1/';
const dirs: string[] = [];

async function tempDir(): Promise<string> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'tso-store-local-'));
  dirs.push(dir);
  return dir;
}

after(async () => {
  for (const d of dirs) await rm(d, { recursive: true, force: true });
});

async function localFixture(): Promise<StoreFixture> {
  const dir = await tempDir();
  const opened: Store[] = [];
  const open = async (sub = ''): Promise<Store> => {
    const s = await LocalStore.open({ dir, prefix: PREFIX + sub, logger });
    opened.push(s);
    return s;
  };
  const store = await open();
  return {
    store,
    open,
    cleanup: async () => {
      for (const s of opened) await s.close();
      await rm(dir, { recursive: true, force: true });
    },
  };
}

runStoreContract('local', localFixture);

describe('LocalStore specifics', () => {
  test('every mutation is on disk (complete JSON, full keys) when its promise resolves', async () => {
    const dir = await tempDir();
    const store = await LocalStore.open({ dir, logger });
    try {
      const file = path.join(dir, LOCAL_STORE_FILE);
      for (let i = 0; i < 5; i++) {
        const rev = await store.put(`networks/n${i}`, JSON.stringify({ vni: 256 + i }));
        const onDisk = JSON.parse(await readFile(file, 'utf8')) as {
          revision: number;
          entries: Record<string, { value: string; revision: number }>;
        };
        assert.equal(onDisk.revision, rev);
        assert.equal(onDisk.entries[`tsoverlay/v1/networks/n${i}`]?.revision, rev);
      }
      await store.delete('networks/n0');
      const onDisk = JSON.parse(await readFile(file, 'utf8')) as { entries: Record<string, unknown> };
      assert.equal(onDisk.entries['tsoverlay/v1/networks/n0'], undefined);
      assert.equal((await stat(file)).mode & 0o777, 0o600);
      assert.deepEqual((await readdir(dir)).sort(), [LOCAL_LOCK_FILE, LOCAL_STORE_FILE].sort(), 'no temp files left');
    } finally {
      await store.close();
    }
    assert.deepEqual(await readdir(dir), [LOCAL_STORE_FILE], 'lock released on close');
  });

  test('a second opener in the same process gets a clear lock error', async () => {
    const dir = await tempDir();
    const first = await LocalStore.open({ dir, logger });
    try {
      await assert.rejects(LocalStore.open({ dir, logger }), (err: unknown) => {
        assert.ok(err instanceof StoreLockedError);
        assert.match(err.message, /already open in this process/);
        assert.match(err.message, new RegExp(LOCAL_LOCK_FILE));
        return true;
      });
    } finally {
      await first.close();
    }
    const second = await LocalStore.open({ dir, logger });
    await second.close();
  });

  test('another live process holds the lock; after it is killed its lock and leased keys are gone', { timeout: 30_000 }, async () => {
    const dir = await tempDir();
    const localJs = path.join(__dirname, '../../src/store/local.js');
    const logJs = path.join(__dirname, '../../src/log.js');
    const script = `
      const { LocalStore } = require(${JSON.stringify(localJs)});
      const { silentLogger } = require(${JSON.stringify(logJs)});
      (async () => {
        const s = await LocalStore.open({ dir: ${JSON.stringify(dir)}, logger: silentLogger() });
        const lease = await s.grantLease(10);
        await s.put('hosts/child', 'alive', { lease });
        await s.put('networks/keep', 'kept');
        process.stdout.write('READY\\n');
        setInterval(() => {}, 1000);
      })().catch((e) => { console.error(e); process.exit(1); });`;
    const child = spawn(process.execPath, ['-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
    try {
      let out = '';
      child.stdout.on('data', (c: Buffer) => (out += c.toString()));
      await waitFor(() => out.includes('READY') || child.exitCode !== null, 15_000, 'child to open the store');
      assert.ok(out.includes('READY'), 'child opened the store');

      await assert.rejects(LocalStore.open({ dir, logger }), (err: unknown) => {
        assert.ok(err instanceof StoreLockedError);
        assert.match(err.message, new RegExp(`process ${child.pid}`));
        assert.match(err.message, /only one process may use a local store/);
        return true;
      });

      const exited = new Promise((r) => child.once('exit', r));
      child.kill('SIGKILL');
      await exited;

      const store = await LocalStore.open({ dir, logger });
      try {
        assert.equal(await store.get('hosts/child'), undefined, 'lease of the dead process is gone');
        assert.equal((await store.get('networks/keep'))?.value, 'kept');
      } finally {
        await store.close();
      }
    } finally {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    }
  });

  test('a stale lock (dead pid, or unreadable and old) is taken over', async () => {
    const dir = await tempDir();
    const lock = path.join(dir, LOCAL_LOCK_FILE);
    await writeFile(lock, JSON.stringify({ pid: 2 ** 22 + 12345, hostname: os.hostname() }));
    const a = await LocalStore.open({ dir, logger });
    await a.close();
    await writeFile(lock, '');
    await assert.rejects(LocalStore.open({ dir, logger }), /lock file being written/);
    const old = new Date(Date.now() - 60_000);
    const { utimes } = await import('node:fs/promises');
    await utimes(lock, old, old);
    const b = await LocalStore.open({ dir, logger });
    await b.close();
  });

  test('a corrupt store file is refused, not silently replaced', async () => {
    const dir = await tempDir();
    const file = path.join(dir, LOCAL_STORE_FILE);
    await writeFile(file, '{"format":"tsoverlay-local-store","version":1,"revis');
    await assert.rejects(LocalStore.open({ dir, logger }), /corrupt or of an unknown format.*move it aside/s);
    assert.equal(await readFile(file, 'utf8'), '{"format":"tsoverlay-local-store","version":1,"revis');
    assert.deepEqual(await readdir(dir), [LOCAL_STORE_FILE], 'lock released after the failed open');
  });

  test('watch: listener exceptions do not break the store; the reset is delivered asynchronously', async () => {
    const dir = await tempDir();
    const store = await LocalStore.open({ dir, logger });
    try {
      await store.put('a/1', 'x');
      let calls = 0;
      const bad = store.watch('a/', {
        onReset: () => {
          calls++;
          throw new Error('boom');
        },
        onEvents: () => {
          calls++;
          throw new Error('boom');
        },
      });
      const rec = new WatchRecorder();
      const good = store.watch('a/', rec);
      assert.equal(rec.resets.length, 0, 'not delivered synchronously inside watch()');
      await store.put('a/2', 'y');
      await waitFor(() => rec.events.length === 1, 2000, 'event');
      assert.equal(calls, 2);
      assert.deepEqual(rec.resets[0]?.map((e) => e.key), ['a/1']);
      await bad.close();
      await good.close();
    } finally {
      await store.close();
    }
  });

  test('openStore(local:///dir) opens the file store with the default prefix', async () => {
    const dir = await tempDir();
    const store = await openStore(`local://${dir}`, { logger });
    try {
      assert.equal(store.description, `local://${dir}`);
      assert.equal(store.distributed, false);
      await store.put('k', 'v');
      const onDisk = JSON.parse(await readFile(path.join(dir, LOCAL_STORE_FILE), 'utf8')) as { entries: Record<string, unknown> };
      assert.ok('tsoverlay/v1/k' in onDisk.entries);
    } finally {
      await store.close();
    }
  });

  test('serialised mutations: 200 concurrent puts all persist, one revision each', async () => {
    const dir = await tempDir();
    const store = await LocalStore.open({ dir, logger });
    const revs = await Promise.all(Array.from({ length: 200 }, (_, i) => store.put(`many/${String(i).padStart(3, '0')}`, String(i))));
    assert.equal(new Set(revs).size, 200);
    await store.close();
    const again = await LocalStore.open({ dir, logger });
    try {
      assert.equal((await again.list('many/')).length, 200);
    } finally {
      await again.close();
    }
  });
});
