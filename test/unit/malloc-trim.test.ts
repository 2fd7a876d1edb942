/**
 * The C heap trimmer: a trim at start and then on its interval, none after close, a failing
 * C library tried once and then left alone; on this machine's glibc the real call exists and
 * returns memory freed by node's Buffers.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import path from 'node:path';
import { test } from 'node:test';
import { silentLogger } from '../../src/log';
import { MallocTrimmer, mallocTrim } from '../../src/util/malloc-trim';

test('trims at start, then on the interval, and stops on close', async () => {
  let calls = 0;
  const t = new MallocTrimmer(silentLogger(), () => {
    calls++;
    return 1;
  });
  t.start(20);
  assert.equal(calls, 1, 'at once');
  await new Promise((resolve) => setTimeout(resolve, 110));
  assert.ok(calls >= 3, `then on the interval (${calls} calls)`);
  t.close();
  const after = calls;
  await new Promise((resolve) => setTimeout(resolve, 60));
  assert.equal(calls, after, 'none after close');
});

test('a C library whose trim throws is tried once, and nothing else breaks', () => {
  let calls = 0;
  const t = new MallocTrimmer(silentLogger(), () => {
    calls++;
    throw new Error('no such symbol');
  });
  t.start(0);
  t.trimNow();
  assert.equal(calls, 1);
  t.close();
});

test('without a trim function (musl) the trimmer does nothing', () => {
  const t = new MallocTrimmer(silentLogger(), null);
  t.start(10);
  t.trimNow();
  t.close();
});

test("glibc's malloc_trim gives back what freed Buffers held", { skip: process.platform !== 'linux' }, () => {
  assert.ok(mallocTrim(), 'glibc has malloc_trim');
  // In a process of its own (with gc exposed): 64 MiB of mid-sized Buffers (malloc'd, below
  // glibc's mmap threshold), all but a few freed; the freed memory stays resident until a trim.
  const script = `
    const { mallocTrim } = require(${JSON.stringify(path.join(__dirname, '../../src/util/malloc-trim.js'))});
    let keep = Array.from({ length: 4096 }, () => Buffer.allocUnsafeSlow(16 * 1024).fill(1));
    keep = keep.filter((_, i) => i % 512 === 511);
    // V8 frees ArrayBuffer memory on a background thread after a collection: a few rounds.
    let rounds = 0;
    const timer = setInterval(() => {
      gc();
      if (++rounds < 6) return;
      clearInterval(timer);
      const before = process.memoryUsage.rss();
      mallocTrim()(0);
      process.stdout.write(JSON.stringify({ before, after: process.memoryUsage.rss(), kept: keep.length }));
    }, 100);
  `;
  const out = JSON.parse(execFileSync(process.execPath, ['--expose-gc', '-e', script], { encoding: 'utf8' })) as { before: number; after: number; kept: number };
  assert.equal(out.kept, 8);
  const freedMiB = (out.before - out.after) / 1024 / 1024;
  assert.ok(freedMiB > 32, `the trim returned ${freedMiB.toFixed(1)} MiB of the 64 freed`);
});
