/**
 * Throughput load from dnsperf (Debian's `dnsperf`, DNS-OARC's tool): a C load generator
 * that keeps `inFlight` queries outstanding. The node generator (dns-load.ts) sends and reads
 * more slowly than either server answers, so a throughput it measures is its own.
 */
import { execFile, spawnSync } from 'node:child_process';
import fs from 'node:fs';

export const DNSPERF = '/usr/bin/dnsperf';

export interface DnsperfResult {
  sent: number;
  completed: number;
  lost: number;
  /** Replies whose response code was NOERROR (every name asked exists). */
  noerror: number;
  seconds: number;
  qps: number;
}

/** A query file of `count` A queries for names drawn from `names` with a seeded generator. */
export function writeQueryFile(file: string, names: readonly string[], count: number): void {
  let x = 0x9e3779b9;
  const lines: string[] = [];
  for (let i = 0; i < count; i++) {
    // xorshift32: the same file on every run
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    lines.push(`${names[(x >>> 0) % names.length]} A`);
  }
  fs.writeFileSync(file, `${lines.join('\n')}\n`);
}

export function dnsperfVersion(): string {
  const r = spawnSync(DNSPERF, ['-h'], { encoding: 'utf8' });
  return /Version (\S+)/.exec(`${r.stdout}${r.stderr}`)?.[1] ?? 'unknown';
}

function field(out: string, label: string): number {
  const m = new RegExp(`${label}:\\s+([0-9.]+)`).exec(out);
  if (!m) throw new Error(`dnsperf printed no "${label}":\n${out}`);
  return Number(m[1]);
}

export async function dnsperf(opts: { address: string; port: number; queryFile: string; inFlight: number; seconds: number }): Promise<DnsperfResult> {
  if (!fs.existsSync(DNSPERF)) throw new Error(`${DNSPERF} is missing: apt-get install dnsperf (.ci/run installs it)`);
  const args = ['-s', opts.address, '-p', String(opts.port), '-d', opts.queryFile, '-l', String(opts.seconds), '-q', String(opts.inFlight), '-t', '2'];
  const out = await new Promise<string>((resolve, reject) => {
    execFile(DNSPERF, args, { timeout: (opts.seconds + 30) * 1000 }, (err, stdout, stderr) => (err ? reject(new Error(`dnsperf: ${err.message}\n${stderr}`)) : resolve(stdout)));
  });
  const noerror = /NOERROR (\d+)/.exec(out);
  return {
    sent: field(out, 'Queries sent'),
    completed: field(out, 'Queries completed'),
    lost: field(out, 'Queries lost'),
    noerror: noerror ? Number(noerror[1]) : 0,
    seconds: field(out, 'Run time \\(s\\)'),
    qps: field(out, 'Queries per second'),
  };
}
