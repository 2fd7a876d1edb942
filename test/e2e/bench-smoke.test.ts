/**
 * The benchmarks are not tests, but they must not rot: each benchmark command runs once at a
 * tiny size (`--smoke`: 1–2 repetitions, 200 peers, 1 s iperf, …) with a time limit, and its
 * JSON report must be well formed — tables with rows, every measurement done, targets with a
 * value. Whether the targets are met is the full run's business (`npm run bench`), not CI's.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, test } from 'node:test';
import { validateReport, type BenchReport } from '../../bench/lib/report';
import { probeEspSupport } from '../../src/dataplane/xfrm';
import { e2eSkipReason } from '../helpers/docker';

const skip = e2eSkipReason(['/usr/bin/etcd', '/usr/bin/iperf3']);
const BENCH_DIR = path.resolve(__dirname, '../../bench');
const outDir = fs.mkdtempSync(path.join(os.tmpdir(), 'tsoverlay-bench-smoke-'));
after(() => fs.rmSync(outDir, { recursive: true, force: true }));

/** Runs `node dist/bench/<name>.js --smoke --json …`; SIGTERM (its own cleanup), then SIGKILL, past the limit. */
function runSmoke(name: string, limitS: number): Promise<{ code: number | null; output: string; report: unknown; seconds: number }> {
  const json = path.join(outDir, `${name}.json`);
  const started = Date.now();
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [path.join(BENCH_DIR, `${name}.js`), '--smoke', '--json', json, '--timeout', String(limitS)], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let output = '';
    const keep = (b: Buffer) => (output = (output + b.toString('utf8')).slice(-20_000));
    child.stdout.on('data', keep);
    child.stderr.on('data', keep);
    const term = setTimeout(() => child.kill('SIGTERM'), (limitS + 30) * 1000);
    const kill = setTimeout(() => child.kill('SIGKILL'), (limitS + 60) * 1000);
    child.on('exit', (code) => {
      clearTimeout(term);
      clearTimeout(kill);
      let report: unknown;
      try {
        report = JSON.parse(fs.readFileSync(json, 'utf8')) as unknown;
      } catch {
        report = undefined;
      }
      resolve({ code, output, report, seconds: (Date.now() - started) / 1000 });
    });
  });
}

const BENCHES: { name: string; limitS: number }[] = [
  { name: 'peers', limitS: 60 },
  { name: 'api-latency', limitS: 60 },
  { name: 'footprint', limitS: 90 },
  { name: 'convergence', limitS: 120 },
  { name: 'dataplane', limitS: 120 },
  { name: 'scale', limitS: 150 },
];

for (const b of BENCHES) {
  test(`benchmark ${b.name} runs at smoke size and reports well-formed results`, { skip, timeout: (b.limitS + 90) * 1000 }, async (t) => {
    const r = await runSmoke(b.name, b.limitS);
    t.diagnostic(`${b.name}: exit ${r.code} after ${r.seconds.toFixed(1)} s`);
    assert.equal(r.code, 0, `${b.name} failed:\n${r.output.slice(-4000)}`);
    assert.deepEqual(validateReport(r.report), [], `${b.name} report:\n${JSON.stringify(r.report).slice(0, 2000)}`);
    const report = r.report as BenchReport;
    assert.equal(report.bench, b.name);
    assert.equal(report.complete, true, `${b.name} did not complete every measurement: ${report.notes.join(' ')}`);
    assert.ok(report.targets.length > 0, 'no target reported');
    for (const target of report.targets) assert.ok(typeof target.value === 'number' && Number.isFinite(target.value), `target "${target.name}" has no value`);
    for (const table of report.tables) {
      for (const row of table.rows) assert.ok(row.every((c) => typeof c === 'string'), `table ${table.title}: non-text cell`);
    }
  });
}

test('benchmark encryption runs at smoke size: measures ESP against clear, or says why it cannot on this kernel', { skip, timeout: 180_000 }, async (t) => {
  const r = await runSmoke('encryption', 90);
  assert.equal(r.code, 0, `encryption failed:\n${r.output.slice(-4000)}`);
  assert.deepEqual(validateReport(r.report), [], JSON.stringify(r.report).slice(0, 2000));
  const report = r.report as BenchReport;
  assert.equal(report.complete, true, report.notes.join(' '));
  const support = await probeEspSupport();
  t.diagnostic(support.ok ? 'kernel has ESP: measured' : `skipped: ${report.skipped}`);
  if (support.ok) {
    assert.equal(report.skipped, undefined);
    assert.equal(report.tables[0]?.rows.length, 2, 'a clear and an ESP row');
  } else {
    assert.match(report.skipped ?? '', /cannot do IPsec ESP: missing /, 'the skip names what the kernel lacks');
    for (const m of support.missing) assert.ok(report.skipped!.includes(m), `the skip names ${m}`);
  }
});
