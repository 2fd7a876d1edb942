/**
 * `npm run bench`: runs every benchmark command one after the other (each a child process that
 * cleans up after itself), collects their JSON reports and rewrites docs/benchmarks.md with the
 * tables, the exact commands and a description of the machine. The hand-written block between
 * `<!-- notes:begin -->` and `<!-- notes:end -->` of the existing file (profiling findings,
 * before/after figures) is kept.
 *
 *   node dist/bench/run-all.js [--only convergence,peers,…] [--smoke] [--out docs/benchmarks.md]
 */
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { parseArgs } from 'node:util';
import { runSync } from '../test/helpers/proc';
import { loadAverage, reportMarkdown, tableMarkdown, validateReport, type BenchReport, type TargetResult } from './lib/report';

interface Run {
  /** Section id (file name of the JSON report). */
  id: string;
  script: string;
  args: string[];
  /** Give up after this many seconds (the command then cleans up and exits). */
  timeoutS: number;
}

const RUNS: Run[] = [
  { id: 'convergence', script: 'convergence', args: [], timeoutS: 1800 },
  { id: 'peers', script: 'peers', args: [], timeoutS: 900 },
  { id: 'api-latency', script: 'api-latency', args: [], timeoutS: 900 },
  { id: 'dataplane', script: 'dataplane', args: [], timeoutS: 1800 },
  { id: 'footprint', script: 'footprint', args: [], timeoutS: 1200 },
  { id: 'names', script: 'names', args: [], timeoutS: 1200 },
  { id: 'encryption', script: 'encryption', args: [], timeoutS: 600 },
  { id: 'scale', script: 'scale', args: [], timeoutS: 3600 },
  // What the deployed node flags (src/node-flags.ts) buy: the same run with node's defaults.
  { id: 'footprint-node-defaults', script: 'footprint', args: ['--node-defaults', '1'], timeoutS: 1200 },
  // What the names service (on by default) costs: the same run with --dns off.
  { id: 'footprint-dns-off', script: 'footprint', args: ['--dns', '0'], timeoutS: 1200 },
];

const NOTES_BEGIN = '<!-- notes:begin -->';
const NOTES_END = '<!-- notes:end -->';

function firstLine(argv: string[]): string {
  try {
    const r = runSync(argv, { allowFailure: true, timeoutMs: 10_000 });
    return (r.stdout || r.stderr).split('\n').find((l) => l.trim())?.trim() ?? 'unknown';
  } catch {
    return 'unknown';
  }
}

function machine(): string[][] {
  const mem = /MemTotal:\s+(\d+) kB/.exec(fs.readFileSync('/proc/meminfo', 'utf8'))?.[1];
  const cpu = /model name\s*:\s*(.*)/.exec(fs.readFileSync('/proc/cpuinfo', 'utf8'))?.[1] ?? 'unknown';
  return [
    ['CPUs (nproc)', `${firstLine(['nproc'])} (${cpu.trim()})`],
    ['memory', mem ? `${(Number(mem) / 1024 / 1024).toFixed(1)} GiB` : 'unknown'],
    ['kernel', `${os.release()} (${os.arch()})`],
    ['node', process.version],
    ['dockerd', firstLine(['/usr/sbin/dockerd', '--version'])],
    ['docker CLI', firstLine(['/usr/bin/docker', '--version'])],
    ['etcd', firstLine(['/usr/bin/etcd', '--version'])],
    ['iperf3', firstLine(['/usr/bin/iperf3', '--version'])],
    ['iproute2', firstLine(['ip', '-V'])],
  ];
}

function runOne(r: Run, jsonPath: string, smoke: boolean): Promise<{ code: number | null; stderrTail: string; seconds: number }> {
  const script = path.join(__dirname, `${r.script}.js`);
  const argv = [script, ...r.args, ...(smoke ? ['--smoke'] : []), '--json', jsonPath, '--timeout', String(r.timeoutS)];
  const started = Date.now();
  return new Promise((resolve) => {
    const child = spawn(process.execPath, argv, { stdio: ['ignore', 'ignore', 'pipe'] });
    let tail = '';
    child.stderr.on('data', (b: Buffer) => {
      process.stderr.write(b);
      tail = (tail + b.toString('utf8')).slice(-3000);
    });
    // The command enforces its own timeout; this is the backstop if it hangs in its cleanup.
    const backstop = setTimeout(() => child.kill('SIGTERM'), (r.timeoutS + 120) * 1000);
    const relay = (sig: NodeJS.Signals) => () => child.kill(sig);
    const onInt = relay('SIGINT');
    const onTerm = relay('SIGTERM');
    process.on('SIGINT', onInt);
    process.on('SIGTERM', onTerm);
    child.on('exit', (code) => {
      clearTimeout(backstop);
      process.off('SIGINT', onInt);
      process.off('SIGTERM', onTerm);
      resolve({ code, stderrTail: tail, seconds: (Date.now() - started) / 1000 });
    });
  });
}

function fmtTarget(t: TargetResult): string {
  if (t.value === null || !Number.isFinite(t.value)) return 'n/a';
  return t.unit === '×' ? `${t.value.toFixed(2)}×` : `${t.value.toFixed(t.unit === 'ms' ? 2 : 1)} ${t.unit}`;
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    args: process.argv.slice(2),
    options: { only: { type: 'string' }, smoke: { type: 'boolean' }, out: { type: 'string' } },
    strict: true,
  });
  const repo = path.resolve(__dirname, '../..');
  const out = path.resolve(values.out ?? path.join(repo, 'docs/benchmarks.md'));
  const only = values.only ? new Set(values.only.split(',')) : undefined;
  const runs = RUNS.filter((r) => !only || only.has(r.id) || only.has(r.script));
  const smoke = values.smoke === true;
  const resultsDir = fs.mkdtempSync(path.join(os.tmpdir(), 'tsoverlay-bench-'));
  const started = new Date();
  const loadBefore = loadAverage();
  process.stderr.write(`[run-all] ${runs.length} benchmark(s); reports in ${resultsDir}; load ${loadBefore.join(' ')}\n`);

  const sections: string[] = [];
  const summary: string[][] = [];
  for (const r of runs) {
    const jsonPath = path.join(resultsDir, `${r.id}.json`);
    process.stderr.write(`\n[run-all] === ${r.id}: node dist/bench/${r.script}.js ${r.args.join(' ')}\n`);
    const res = await runOne(r, jsonPath, smoke);
    let report: BenchReport | undefined;
    let problem = '';
    try {
      const parsed = JSON.parse(fs.readFileSync(jsonPath, 'utf8')) as unknown;
      const problems = validateReport(parsed);
      if (problems.length) problem = `malformed report: ${problems.join('; ')}`;
      else report = parsed as BenchReport;
    } catch (err) {
      problem = `no report (${(err as Error).message})`;
    }
    if (report && res.code === 0) {
      sections.push(reportMarkdown(report, 2));
      if (report.skipped) summary.push([report.title.replace(/:.*$/, ''), 'skipped', 'n/a', '', `skipped: ${report.skipped}`]);
      else if (report.targets.length === 0) summary.push([report.title.replace(/:.*$/, ''), 'measured, no target', 'see its section', '', '']);
      for (const t of report.targets) summary.push([report.title.replace(/:.*$/, ''), t.name, fmtTarget(t), `${t.op} ${t.unit === '×' ? `${t.limit}×` : `${t.limit} ${t.unit}`}`, t.met ? 'yes' : '**no**']);
    } else {
      const cmd = `node dist/bench/${r.script}.js ${r.args.join(' ')}`.trim();
      sections.push([`## ${r.id}: FAILED`, '', `\`${cmd}\` exited with ${res.code} after ${res.seconds.toFixed(0)} s${problem ? `; ${problem}` : ''}. Last output:`, '', '```', res.stderrTail.trim(), '```', ''].join('\n'));
      summary.push([r.id, 'did not complete', 'n/a', '', '**no**']);
    }
  }
  const finished = new Date();
  const loadAfter = loadAverage();
  const minutes = (finished.getTime() - started.getTime()) / 60000;

  let notes = `${NOTES_BEGIN}\n_(No notes yet.)_\n${NOTES_END}`;
  if (fs.existsSync(out)) {
    const old = fs.readFileSync(out, 'utf8');
    const a = old.indexOf(NOTES_BEGIN);
    const b = old.indexOf(NOTES_END);
    if (a >= 0 && b > a) notes = old.slice(a, b + NOTES_END.length);
  }
  const doc = [
    '# Benchmarks',
    '',
    '<!-- Generated by `npm run bench` (bench/run-all.ts). Edit only the notes block below; the rest is rewritten on every run. -->',
    '',
    'Every figure here comes from one run of `npm run bench` on the machine described below, and every',
    'claim is a ratio against a baseline measured in the same run: the machine is a shared 2-core VM',
    'where other jobs run at the same time, so absolute numbers move by tens of percent from run to run.',
    '',
    '```sh',
    'npm run bench                                   # = npm run build && node dist/bench/run-all.js',
    'node dist/bench/run-all.js --only peers,api-latency   # a subset',
    'node dist/bench/<name>.js --help                # one benchmark, its options',
    '```',
    '',
    `Run ${smoke ? '(**smoke sizes**, not a real measurement) ' : ''}started ${started.toISOString()}, took ${minutes.toFixed(1)} min; load average ${loadBefore.join(' ')} at the start, ${loadAfter.join(' ')} at the end.`,
    '',
    tableMarkdown({ title: 'machine', columns: ['machine', ''], rows: machine() }),
    '',
    '## Targets',
    '',
    tableMarkdown({ title: 'targets', columns: ['benchmark', 'target', 'measured', 'required', 'met'], rows: summary }),
    '',
    '## Profiling notes, fixes, before/after',
    '',
    notes,
    '',
    ...sections,
  ].join('\n');
  fs.mkdirSync(path.dirname(out), { recursive: true });
  fs.writeFileSync(out, `${doc.trimEnd()}\n`);
  process.stderr.write(`\n[run-all] wrote ${out} (${minutes.toFixed(1)} min); JSON reports in ${resultsDir}\n`);
}

main().catch((err: unknown) => {
  process.stderr.write(`[run-all] ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  process.exit(1);
});
