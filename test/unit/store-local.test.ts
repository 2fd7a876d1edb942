import { after, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { appendFile, copyFile, mkdtemp, readFile, readdir, rm, stat, writeFile } from 'node:fs/promises';
import type { FileHandle } from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';

import { silentLogger } from '../../src/log';
import {
  LOCAL_LOCK_FILE,
  LOCAL_LOG_FILE,
  LOCAL_STORE_FILE,
  LOCAL_TORN_FILE_PREFIX,
  LocalStore,
  StoreLockedError,
  readLocalStoreSnapshot,
} from '../../src/store/local';
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

interface LogRecord {
  rev: number;
  ops: Array<{ type: string; key: string; value?: string; lease?: string }>;
}

/** The records of a log, without the CRC each line carries (checked by the tests on damage). */
function logRecords(text: string): LogRecord[] {
  return text
    .split('\n')
    .filter(Boolean)
    .map((l) => {
      const { crc, ...record } = JSON.parse(l) as LogRecord & { crc?: string };
      assert.match(String(crc), /^[0-9a-f]{8}$/, 'every appended line carries its CRC');
      return record;
    });
}

/** The directory as a crash would leave it right now (the store is idle): its files, no lock. */
async function crashCopy(dir: string): Promise<string> {
  const copy = await tempDir();
  for (const name of [LOCAL_STORE_FILE, LOCAL_LOG_FILE]) {
    await copyFile(path.join(dir, name), path.join(copy, name)).catch((err: NodeJS.ErrnoException) => {
      if (err.code !== 'ENOENT') throw err;
    });
  }
  return copy;
}

async function dump(store: Store, prefix = ''): Promise<Array<[string, string, number]>> {
  return (await store.list(prefix)).map((e) => [e.key, e.value, e.revision]);
}

function logOf(store: LocalStore): FileHandle {
  return (store as unknown as { log: FileHandle }).log;
}

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
  test('every mutation is in the log (one record, full keys) when its promise resolves; close leaves the snapshot alone', async () => {
    const dir = await tempDir();
    const store = await LocalStore.open({ dir, logger });
    const file = path.join(dir, LOCAL_STORE_FILE);
    const log = path.join(dir, LOCAL_LOG_FILE);
    try {
      for (let i = 0; i < 5; i++) {
        const rev = await store.put(`networks/n${i}`, JSON.stringify({ vni: 256 + i }));
        const records = logRecords(await readFile(log, 'utf8'));
        assert.equal(records.length, i + 1);
        assert.deepEqual(records[i], { rev, ops: [{ type: 'put', key: `tsoverlay/v1/networks/n${i}`, value: JSON.stringify({ vni: 256 + i }) }] });
        assert.equal((await readLocalStoreSnapshot(dir)).find((e) => e.key === `networks/n${i}`)?.revision, rev);
      }
      await store.delete('networks/n0');
      assert.deepEqual(logRecords(await readFile(log, 'utf8')).at(-1)?.ops, [{ type: 'delete', key: 'tsoverlay/v1/networks/n0' }]);
      assert.equal((await stat(log)).mode & 0o777, 0o600);
      assert.deepEqual((await readdir(dir)).sort(), [LOCAL_LOCK_FILE, LOCAL_LOG_FILE].sort(), 'no snapshot rewritten, no temp files');
    } finally {
      await store.close();
    }
    assert.deepEqual((await readdir(dir)).sort(), [LOCAL_LOG_FILE, LOCAL_STORE_FILE].sort(), 'lock released on close');
    assert.equal(await readFile(log, 'utf8'), '', 'log compacted at close');
    const onDisk = JSON.parse(await readFile(file, 'utf8')) as { revision: number; entries: Record<string, { revision: number }> };
    assert.equal(onDisk.revision, 6);
    assert.deepEqual(Object.keys(onDisk.entries), [1, 2, 3, 4].map((i) => `tsoverlay/v1/networks/n${i}`));
    assert.equal((await stat(file)).mode & 0o777, 0o600);
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
      assert.deepEqual((await readLocalStoreSnapshot(dir, 'tsoverlay/')).map((e) => e.key), ['v1/k']);
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

describe('LocalStore write-ahead log', () => {
  test('a crash without close: reopen replays the log (values, revisions), drops the leased keys, starts with an empty log', async () => {
    const dir = await tempDir();
    const store = await LocalStore.open({ dir, logger });
    let copy: string;
    let before: Array<[string, string, number]>;
    try {
      await store.put('a/1', 'one');
      await store.put('a/2', 'two');
      await store.put('a/1', 'uno');
      const lease = await store.grantLease(10);
      await store.put('hosts/me', 'alive', { lease });
      await store.deletePrefix('a/2');
      assert.equal(await store.compareAndSet('a/3', 'three', 0), 6);
      before = (await dump(store)).filter(([k]) => k !== 'hosts/me');
      assert.equal(await readFile(path.join(dir, LOCAL_STORE_FILE), 'utf8').catch(() => 'none'), 'none', 'everything is in the log only');
      copy = await crashCopy(dir);
    } finally {
      await store.close();
    }
    const again = await LocalStore.open({ dir: copy, logger });
    try {
      assert.deepEqual(await dump(again), before, 'replayed state, the dead lease holder\'s key gone');
      assert.deepEqual(before, [['a/1', 'uno', 3], ['a/3', 'three', 6]]);
      assert.equal(await readFile(path.join(copy, LOCAL_LOG_FILE), 'utf8'), '', 'compacted at open');
      const snap = JSON.parse(await readFile(path.join(copy, LOCAL_STORE_FILE), 'utf8')) as {
        revision: number;
        entries: Record<string, { createRevision: number }>;
      };
      assert.equal(snap.revision, 7, 'the lease cleanup took one revision');
      assert.equal(snap.entries['tsoverlay/v1/a/1']?.createRevision, 1, 'createRevision survives replay');
      assert.equal(await again.put('a/4', 'four'), 8, 'the revision counter continues');
    } finally {
      await again.close();
    }
  });

  test('a torn last line (crash mid-append) is ignored; the next write takes its revision', async () => {
    for (const tail of ['{"rev":3,"ops":[{"type":"put","key":"tsoverlay/v1/torn","val', '\0\0\0\0\0\0', '{"rev":3,"ops":[{"type":"put","key":"tsoverlay/v1/torn","value":"x"}]}']) {
      const dir = await tempDir();
      const store = await LocalStore.open({ dir, logger });
      let copy: string;
      try {
        await store.put('a', '1');
        await store.put('b', '2');
        copy = await crashCopy(dir);
      } finally {
        await store.close();
      }
      await appendFile(path.join(copy, LOCAL_LOG_FILE), tail);
      const again = await LocalStore.open({ dir: copy, logger });
      try {
        assert.deepEqual(await dump(again), [['a', '1', 1], ['b', '2', 2]], JSON.stringify(tail));
        assert.equal(await again.put('c', '3'), 3);
      } finally {
        await again.close();
      }
    }
  });

  test('an unreadable line before the last, or a revision gap, is corruption: open refuses and leaves the files alone', async () => {
    const good = (rev: number, key: string): string => JSON.stringify({ rev, ops: [{ type: 'put', key: `tsoverlay/v1/${key}`, value: 'v' }] }) + '\n';
    const cases: Array<[string, RegExp]> = [
      [good(1, 'a') + '{"rev":2,"ops":[{"ty\n' + good(3, 'c'), /line 2 of 3/],
      [good(1, 'a') + good(3, 'c') + good(4, 'd'), /line 2 of 3.*revision 3 follows 1/s],
    ];
    for (const [text, why] of cases) {
      const dir = await tempDir();
      const log = path.join(dir, LOCAL_LOG_FILE);
      await writeFile(log, text);
      await assert.rejects(LocalStore.open({ dir, logger }), (err: unknown) => {
        assert.match(String(err), /local store log .*store\.log is corrupt/);
        assert.match(String(err), why);
        assert.match(String(err), /refusing to start with partial state/);
        return true;
      });
      assert.equal(await readFile(log, 'utf8'), text);
      assert.deepEqual(await readdir(dir), [LOCAL_LOG_FILE], 'lock released, no snapshot written');
      await assert.rejects(readLocalStoreSnapshot(dir), /is corrupt/);
    }
  });

  test('log records already in the snapshot (crash between compaction and truncation) are skipped', async () => {
    const dir = await tempDir();
    const store = await LocalStore.open({ dir, logger });
    try {
      await store.put('a', '1');
      await store.put('a', '2');
    } finally {
      await store.close(); // compacts: snapshot at revision 2, empty log
    }
    await writeFile(
      path.join(dir, LOCAL_LOG_FILE),
      JSON.stringify({ rev: 1, ops: [{ type: 'put', key: 'tsoverlay/v1/a', value: '1' }] }) + '\n' +
        JSON.stringify({ rev: 2, ops: [{ type: 'delete', key: 'tsoverlay/v1/a' }] }) + '\n' +
        JSON.stringify({ rev: 3, ops: [{ type: 'put', key: 'tsoverlay/v1/b', value: 'new' }] }) + '\n',
    );
    assert.deepEqual((await readLocalStoreSnapshot(dir)).map((e) => [e.key, e.value, e.revision]), [['a', '2', 2], ['b', 'new', 3]]);
    const again = await LocalStore.open({ dir, logger });
    try {
      assert.deepEqual(await dump(again), [['a', '2', 2], ['b', 'new', 3]]);
    } finally {
      await again.close();
    }
  });

  test('compaction at the bound: the log stays short, state and revisions are kept across a crash', async () => {
    const dir = await tempDir();
    const store = await LocalStore.open({ dir, logger, logLimit: { records: 5 } });
    const expected = new Map<string, [string, number]>();
    let copy: string;
    try {
      for (let i = 0; i < 23; i++) {
        const key = `k/${i % 7}`;
        if (i % 5 === 4 && expected.has(key)) {
          await store.delete(key);
          expected.delete(key);
        } else {
          expected.set(key, [String(i), await store.put(key, String(i))]);
        }
        assert.ok(logRecords(await readFile(path.join(dir, LOCAL_LOG_FILE), 'utf8')).length <= 5, `log bounded after write ${i}`);
      }
      const snap = JSON.parse(await readFile(path.join(dir, LOCAL_STORE_FILE), 'utf8')) as { revision: number };
      assert.equal(snap.revision, 20, 'compacted at revisions 5, 10, 15 and 20');
      const want = [...expected].sort(([a], [b]) => (a < b ? -1 : 1)).map(([k, [v, r]]) => [k, v, r]);
      assert.deepEqual(await dump(store), want);
      assert.deepEqual((await readLocalStoreSnapshot(dir)).map((e) => [e.key, e.value, e.revision]), want);
      copy = await crashCopy(dir);
      const again = await LocalStore.open({ dir: copy, logger });
      try {
        assert.deepEqual(await dump(again), want);
        assert.equal(await again.put('z', 'z'), 24);
      } finally {
        await again.close();
      }
    } finally {
      await store.close();
    }
  });

  test('close waits for a compaction queued by the last mutation (no two compactions at once)', async () => {
    const dir = await tempDir();
    const warnings: string[] = [];
    const spy = silentLogger();
    spy.warn = ((msg: string, meta?: unknown) => {
      warnings.push(`${msg} ${JSON.stringify(meta)}`);
      return spy;
    }) as typeof spy.warn;
    const store = await LocalStore.open({ dir, logger: spy, logLimit: { records: 1 } });
    const pending = store.put('a', '1'); // queues a compaction once it has committed
    await store.close();
    assert.equal(await pending, 1);
    assert.deepEqual(warnings, []);
    assert.equal(await readFile(path.join(dir, LOCAL_LOG_FILE), 'utf8'), '');
    assert.deepEqual((await readLocalStoreSnapshot(dir)).map((e) => [e.key, e.value]), [['a', '1']]);
  });

  test('the byte bound compacts too', async () => {
    const dir = await tempDir();
    const store = await LocalStore.open({ dir, logger, logLimit: { bytes: 1000 } });
    try {
      for (let i = 0; i < 20; i++) await store.put(`big/${i}`, 'x'.repeat(300));
      assert.ok((await stat(path.join(dir, LOCAL_LOG_FILE))).size < 1400);
      assert.equal((await readLocalStoreSnapshot(dir)).length, 20);
    } finally {
      await store.close();
    }
  });

  test('readLocalStoreSnapshot sees writes that are only in the log, and stays consistent while the store compacts', async () => {
    const dir = await tempDir();
    const store = await LocalStore.open({ dir, logger, logLimit: { records: 1 } });
    try {
      assert.deepEqual(await readLocalStoreSnapshot(dir), []);
      const rev = await store.put('only/in/log', 'yes');
      await assert.rejects(readFile(path.join(dir, LOCAL_STORE_FILE)), /ENOENT/);
      assert.deepEqual(await readLocalStoreSnapshot(dir), [{ key: 'only/in/log', value: 'yes', revision: rev }]);
      await store.delete('only/in/log');
      assert.deepEqual(await readLocalStoreSnapshot(dir), []);

      // Writer: seq/0, seq/1, … in order, compacting after every record (each truncation is
      // followed at once by the next append). Every read, by four readers at once, must be a prefix.
      let done = false;
      const writer = (async () => {
        try {
          for (let i = 0; i < 300; i++) await store.put(`seq/${String(i).padStart(3, '0')}`, String(i));
        } finally {
          done = true;
        }
      })();
      let reads = 0;
      let failed = false;
      const reader = async (): Promise<void> => {
        while (!done && !failed) {
          const seen = (await readLocalStoreSnapshot(dir)).filter((e) => e.key.startsWith('seq/')).map((e) => Number(e.value));
          try {
            assert.deepEqual(seen, seen.map((_, i) => i), `read ${reads}: a committed prefix`);
          } catch (err) {
            failed = true;
            throw err;
          }
          reads++;
        }
      };
      await Promise.all([writer, reader(), reader(), reader(), reader()]);
      assert.ok(reads > 20, `${reads} reads overlapped the writes`);
      assert.equal((await readLocalStoreSnapshot(dir)).length, 300);
    } finally {
      await store.close();
    }
  });

  test('readLocalStoreSnapshot: a compaction between its snapshot read and its log read is detected and retried', async () => {
    const dir = await tempDir();
    const store = await LocalStore.open({ dir, logger, logLimit: { records: 1 } });
    const fsPromises = (await import('node:fs')).promises;
    const realReadFile = fsPromises.readFile;
    try {
      await store.put('a', '1');
      await store.delete('absent'); // no-op through the queue: the compaction after 'a' is done
      assert.equal((JSON.parse(await readFile(path.join(dir, LOCAL_STORE_FILE), 'utf8')) as { revision: number }).revision, 1);
      let armed = true;
      // The reader has the snapshot at revision 1 in hand when it reads the log; meanwhile the
      // store appends 2, compacts (snapshot 2, log truncated) and appends 3.
      (fsPromises as { readFile: unknown }).readFile = async (...args: Parameters<typeof realReadFile>): Promise<unknown> => {
        if (armed && String(args[0]).endsWith(LOCAL_LOG_FILE)) {
          armed = false;
          await store.put('b', '2');
          await store.put('c', '3');
        }
        return realReadFile(...args);
      };
      const seen = await readLocalStoreSnapshot(dir);
      assert.equal(armed, false, 'the interleaving happened');
      assert.deepEqual(seen.map((e) => [e.key, e.value, e.revision]), [['a', '1', 1], ['b', '2', 2], ['c', '3', 3]]);
    } finally {
      (fsPromises as { readFile: unknown }).readFile = realReadFile;
      await store.close();
    }
  });

  test('a failed append fails its mutation, and nothing is appended after its torn bytes', async () => {
    const dir = await tempDir();
    const store = await LocalStore.open({ dir, logger });
    const log = path.join(dir, LOCAL_LOG_FILE);
    try {
      await store.put('a', '1');
      const fh = logOf(store);
      const realWrite = fh.write.bind(fh);
      const realTruncate = fh.truncate.bind(fh);
      const tornWrite = async (buf: Buffer): Promise<never> => {
        await realWrite(buf.subarray(0, 10), 0, 10, null); // half a record on disk, then the disk is full
        throw Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC' });
      };

      // 1. The compaction right after the failure works: the torn bytes are gone at once.
      (fh as unknown as { write: unknown }).write = tornWrite;
      await assert.rejects(store.put('b', '2'), /ENOSPC/);
      (fh as unknown as { write: unknown }).write = realWrite;
      assert.equal(await readFile(log, 'utf8'), '', 'log truncated after the failed append');
      assert.equal(await store.get('b'), undefined);
      assert.equal(await store.put('c', '3'), 2, 'the failed write took no revision');

      // 2. That compaction fails too: the next mutation compacts before it appends.
      (fh as unknown as { write: unknown }).write = tornWrite;
      let truncateFails = 1;
      (fh as unknown as { truncate: unknown }).truncate = async (len?: number): Promise<void> => {
        if (truncateFails-- > 0) throw Object.assign(new Error('EIO: i/o error, ftruncate'), { code: 'EIO' });
        return realTruncate(len);
      };
      await assert.rejects(store.put('d', '4'), /ENOSPC/);
      (fh as unknown as { write: unknown }).write = realWrite;
      assert.ok((await readFile(log, 'utf8')).length > 0, 'torn bytes still there');
      assert.equal(await store.put('e', '5'), 3);
      assert.deepEqual(logRecords(await readFile(log, 'utf8')).map((r) => r.rev), [3], 'compacted before appending');

      const copy = await crashCopy(dir);
      const again = await LocalStore.open({ dir: copy, logger });
      try {
        assert.deepEqual(await dump(again), [['a', '1', 1], ['c', '3', 2], ['e', '5', 3]]);
      } finally {
        await again.close();
      }
    } finally {
      await store.close();
    }
  });
});

describe('LocalStore: an acknowledged write is never dropped silently', () => {
  /** A store directory as a crash leaves it: a log of three acknowledged writes, no snapshot. */
  async function crashedWithThreeWrites(): Promise<{ dir: string; log: string; text: string }> {
    const dir = await tempDir();
    const store = await LocalStore.open({ dir, logger });
    let copy: string;
    try {
      await store.put('ipam/addresses/10.9.0.0-24/10.9.0.2', JSON.stringify({ host: 'h1', kind: 'endpoint' }));
      await store.put('ipam/addresses/10.9.0.0-24/10.9.0.3', JSON.stringify({ host: 'h1', kind: 'endpoint' }));
      await store.put('ipam/addresses/10.9.0.0-24/10.9.0.4', JSON.stringify({ host: 'h1', kind: 'endpoint' }));
      copy = await crashCopy(dir);
    } finally {
      await store.close();
    }
    const log = path.join(copy, LOCAL_LOG_FILE);
    return { dir: copy, log, text: await readFile(log, 'latin1') };
  }

  async function assertRefused(dir: string, log: string, damaged: string, line: RegExp, label: string): Promise<void> {
    await assert.rejects(LocalStore.open({ dir, logger }), (err: unknown) => {
      const msg = String(err);
      assert.match(msg, new RegExp(`local store log ${log.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} is corrupt`), label);
      assert.match(msg, line, label);
      assert.match(msg, /refusing to start with partial state/, label);
      assert.match(msg, /left exactly as it is/, label);
      assert.match(msg, /head -n \d+ /, `${label}: says what a person can do`);
      return true;
    }, label);
    assert.equal(await readFile(log, 'latin1'), damaged, `${label}: the log is unchanged, byte for byte`);
    assert.deepEqual(await readdir(dir), [LOCAL_LOG_FILE], `${label}: no snapshot, no compaction, lock released`);
  }

  test('any single flipped bit in the terminated last line: open refuses and keeps the log byte for byte', async (t) => {
    const { dir, log, text } = await crashedWithThreeWrites();
    const lastStart = text.lastIndexOf('\n', text.length - 2) + 1;
    const lastEnd = text.length - 1; // the newline: flipping it makes the line unterminated (a torn append)
    let checked = 0;
    for (let at = lastStart; at < lastEnd; at++) {
      for (const bit of [0x01]) {
        const damaged = text.slice(0, at) + String.fromCharCode(text.charCodeAt(at) ^ bit) + text.slice(at + 1);
        if (damaged.indexOf('\n', lastStart) !== damaged.length - 1) continue; // became two lines
        await writeFile(log, damaged, 'latin1');
        await assertRefused(dir, log, damaged, /line 3 of 3/, `byte ${at - lastStart} ^ 0x${bit.toString(16)}`);
        checked++;
      }
    }
    assert.ok(checked > 80, `checked ${checked} damaged copies`);
    t.diagnostic(`${checked} copies with one flipped bit in the last line: all refused, all left byte for byte`);
    await writeFile(log, text, 'latin1');
    const again = await LocalStore.open({ dir, logger });
    try {
      assert.equal((await again.list('ipam/')).length, 3, 'the undamaged log opens with all three writes');
    } finally {
      await again.close();
    }
  });

  test('a truncated record, or NULs, in a newline-terminated last line: refused, log kept', async () => {
    const { dir, log, text } = await crashedWithThreeWrites();
    const lastStart = text.lastIndexOf('\n', text.length - 2) + 1;
    for (const [label, last] of [
      ['truncated JSON', text.slice(lastStart, lastStart + 30) + '\n'],
      ['NULs', '\0\0\0\0\0\0\n'],
      ['valid JSON, wrong shape', '{"rev":3}\n'],
    ] as const) {
      const damaged = text.slice(0, lastStart) + last;
      await writeFile(log, damaged, 'latin1');
      await assertRefused(dir, log, damaged, /line 3 of 3/, label);
    }
  });

  test('a truncated tail without its newline is a torn append: dropped (a copy kept), every earlier write present', async () => {
    const { dir, log, text } = await crashedWithThreeWrites();
    const tail = '{"rev":4,"ops":[{"type":"put","key":"tsoverlay/v1/ipam/addresses/10.9.0.0-24/10.9.0.5","val';
    await writeFile(log, text + tail, 'latin1');
    const again = await LocalStore.open({ dir, logger });
    try {
      assert.deepEqual((await again.list('ipam/')).map((e) => [e.key, e.revision]), [
        ['ipam/addresses/10.9.0.0-24/10.9.0.2', 1],
        ['ipam/addresses/10.9.0.0-24/10.9.0.3', 2],
        ['ipam/addresses/10.9.0.0-24/10.9.0.4', 3],
      ]);
      assert.equal(await again.put('ipam/addresses/10.9.0.0-24/10.9.0.5', '{}'), 4, 'the torn write took no revision');
    } finally {
      await again.close();
    }
    const kept = (await readdir(dir)).filter((n) => n.startsWith(LOCAL_TORN_FILE_PREFIX));
    assert.equal(kept.length, 1, 'the dropped bytes are kept beside the log');
    assert.equal(await readFile(path.join(dir, kept[0]!), 'latin1'), tail);
  });

  test('lines of an older version (no CRC) are still read', async () => {
    const dir = await tempDir();
    const line = (rev: number, key: string): string => JSON.stringify({ rev, ops: [{ type: 'put', key: `tsoverlay/v1/${key}`, value: 'v' }] }) + '\n';
    await writeFile(path.join(dir, LOCAL_LOG_FILE), line(1, 'a') + line(2, 'b'));
    const store = await LocalStore.open({ dir, logger });
    try {
      assert.deepEqual(await dump(store), [['a', 'v', 1], ['b', 'v', 2]]);
    } finally {
      await store.close();
    }
  });

  test('a zombie lock holder (exited, not reaped by its parent) does not block a restart', { timeout: 30_000 }, async () => {
    const dir = await tempDir();
    const localJs = path.join(__dirname, '../../src/store/local.js');
    const logJs = path.join(__dirname, '../../src/log.js');
    const script = `
      const { LocalStore } = require(${JSON.stringify(localJs)});
      const { silentLogger } = require(${JSON.stringify(logJs)});
      (async () => {
        const s = await LocalStore.open({ dir: ${JSON.stringify(dir)}, logger: silentLogger() });
        await s.put('networks/kept', 'by the zombie');
        process.stdout.write('READY ' + process.pid + '\\n');
        process.exit(0); // no close: the lock file stays, naming this pid
      })().catch((e) => { console.error(e); process.exit(1); });`;
    // The holder is started in the background by a shell that then becomes `sleep`, which never
    // waits for children: the holder, once exited, stays a zombie until sleep is gone.
    const parent = spawn('/bin/sh', ['-c', `"$0" -e "$1" & exec sleep 60`, process.execPath, script], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    try {
      let out = '';
      parent.stdout.on('data', (c: Buffer) => (out += c.toString()));
      await waitFor(() => /READY \d+/.test(out) || parent.exitCode !== null, 15_000, 'holder to open the store');
      const holder = Number(/READY (\d+)/.exec(out)?.[1]);
      assert.ok(holder > 0, `holder started: ${out}`);
      const state = (): string => {
        const stat = readFileSyncSafe(`/proc/${holder}/stat`);
        return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
      };
      await waitFor(() => state() === 'Z', 10_000, 'holder to become a zombie');
      const lock = JSON.parse(await readFile(path.join(dir, LOCAL_LOCK_FILE), 'utf8')) as { pid: number };
      assert.equal(lock.pid, holder, 'the lock names the zombie');

      const store = await LocalStore.open({ dir, logger });
      try {
        assert.equal((await store.get('networks/kept'))?.value, 'by the zombie');
      } finally {
        await store.close();
      }
      assert.equal(state(), 'Z', 'still a zombie while the store was opened');
    } finally {
      const exited = new Promise((r) => parent.once('exit', r));
      if (parent.exitCode === null && parent.signalCode === null) parent.kill('SIGKILL');
      await exited;
    }
  });
});

function readFileSyncSafe(file: string): string {
  try {
    return readFileSync(file, 'utf8');
  } catch {
    return '';
  }
}
