/**
 * Benchmark 6 — names: the network DNS server against dnsmasq, and (with a cluster) how fast a
 * new container's name resolves on another host.
 *
 * DNS: `--names` containers on one network, served by tsoverlay's DNS server as the daemon runs
 * it (the store-watching names view and the server, in a process of its own) and by Debian's
 * dnsmasq with a hosts file of the same names and addresses, both on loopback
 * (127.0.0.1, ports free at the time). The same load generators (A queries for random names,
 * UDP) measure both: latency with one query in flight (bench/lib/dns-load.ts, which also checks
 * every address answered) and throughput with `--in-flight` in flight (dnsperf, a C generator
 * faster than either server, so that the figure is the server's); the two servers alternate,
 * `--rounds` times each.
 *
 * Convergence (`--convergence N` > 0): two hosts, tsoverlay with etcd; N times, `docker run -d`
 * a container on A while a container on B loops `nslookup <name> <gateway>` and
 * `ping <address>`; (a) is the `docker run -d` command, (b) the first successful lookup on B,
 * (c) the first ping reply on B, each from the command's start (timestamps of B's dockerd).
 *
 *   node dist/bench/names.js [--names 10000] [--seconds 5] [--in-flight 64] [--rounds 2] [--convergence 10] [--json FILE]
 */
import fs from 'node:fs';
import path from 'node:path';
import { runDir, spawnTracked, runSync, type ManagedProcess } from '../test/helpers/proc';
import { benchIp, benchName } from './lib/dns-serve';
import { dnsLoad, type LoadResult } from './lib/dns-load';
import { dnsperf, dnsperfVersion, writeQueryFile, type DnsperfResult } from './lib/dnsperf';
import dgram from 'node:dgram';
import { runBench } from './lib/main';
import { target, type BenchTable, type TargetResult } from './lib/report';
import { fmt, fmtRatio, quantile, ratio } from './lib/stats';
import { measureConvergence } from './lib/names-convergence';
import { cpuSecondsOf } from './lib/plugin';
import { NODE_FLAGS } from '../src/node-flags';
import os from 'node:os';
import { execFileSync } from 'node:child_process';

/** A UDP port free on 127.0.0.1 right now (the servers bind it a moment later). */
async function freePort(): Promise<number> {
  const s = dgram.createSocket('udp4');
  await new Promise<void>((r) => s.bind(0, '127.0.0.1', () => r()));
  const port = s.address().port;
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

interface Runs {
  latency: LoadResult[];
  throughput: DnsperfResult[];
  /** Server CPU seconds per answer in the throughput runs. */
  cpuPerAnswer: number[];
}

{
  runBench(
    {
      name: 'names',
      title: '6. Names: DNS answers against dnsmasq, and name convergence across hosts',
      description: 'DNS latency and throughput with N names (tsoverlay vs dnsmasq with a hosts file), and the time until a new container resolves on another host.',
      options: {
        names: { full: 10_000, smoke: 200, help: 'container names on the network' },
        seconds: { full: 5, smoke: 1, help: 'seconds per load run' },
        'in-flight': { full: 100, smoke: 8, help: "queries in flight in the throughput runs (dnsperf's default: 100)" },
        rounds: { full: 2, smoke: 1, help: 'load runs per server (alternating)' },
        convergence: { full: 10, smoke: 1, help: 'containers started for the convergence measurement (0: skip)' },
        pin: { full: 1, smoke: 0, help: '1: the load generator on the first CPU, each server on the second (both servers alike; needs 2 CPUs)' },
      },
    },
    async (p, ctx) => {
      const dir = runDir();
      const OURS_PORT = await freePort();
      const DNSMASQ_PORT = await freePort();
      const names = Array.from({ length: p.names }, (_, i) => benchName(i));
      const hostsFile = path.join(dir, 'names.hosts');
      fs.writeFileSync(hostsFile, names.map((n, i) => `${benchIp(i)} ${n}\n`).join(''));
      const queryFile = path.join(dir, 'queries.txt');
      writeQueryFile(queryFile, names, 100_000);

      // Both servers get the same treatment: a CPU of their own, away from the load generator,
      // so that neither shares a core with it by the scheduler's chance.
      const pinned = p.pin === 1 && os.cpus().length >= 2;
      if (pinned) execFileSync('taskset', ['-a', '-p', '-c', '0', String(process.pid)], { stdio: 'ignore' });
      const onServerCpu = (argv: string[]): string[] => (pinned ? ['taskset', '-c', '1', ...argv] : argv);

      ctx.log(`starting tsoverlay's DNS server with ${p.names} names`);
      const storeDir = path.join(dir, 'names-store');
      // With the daemon's node flags: the server as deployed.
      const ours = spawnTracked(onServerCpu([process.execPath, ...NODE_FLAGS, path.join(__dirname, 'lib/dns-serve.js'), storeDir, String(OURS_PORT), String(p.names)]), {
        name: 'dns-serve',
      });
      await ours.waitForOutput(/ready \d+/, 300_000);
      const served = Number(/ready (\d+)/.exec(ours.output())?.[1]);
      if (served !== p.names) throw new Error(`tsoverlay's server serves ${served} names, expected ${p.names}`);
      ctx.log('starting dnsmasq');
      const dnsmasq: ManagedProcess = spawnTracked(
        onServerCpu(['/usr/sbin/dnsmasq', '--keep-in-foreground', '--no-resolv', '--no-hosts', `--addn-hosts=${hostsFile}`, '--listen-address=127.0.0.1',
          '--bind-interfaces', `--port=${DNSMASQ_PORT}`, '--user=root', '--pid-file', '--log-facility=-', '--local-ttl=0']),
        { name: 'dnsmasq' },
      );
      await dnsmasq.waitForOutput(/read .*names\.hosts/, 30_000);

      const servers = [
        { key: 'tsoverlay', port: OURS_PORT, runs: { latency: [], throughput: [], cpuPerAnswer: [] } as Runs, pid: ours.pid },
        { key: 'dnsmasq', port: DNSMASQ_PORT, runs: { latency: [], throughput: [], cpuPerAnswer: [] } as Runs, pid: dnsmasq.pid },
      ];
      // Steady state: every name asked once before measuring (both servers answer from memory then).
      for (const s of servers) await dnsLoad({ address: '127.0.0.1', port: s.port, names, inFlight: 16, seconds: 120, onePass: true });
      for (let round = 0; round < p.rounds; round++) {
        const order = round % 2 === 0 ? servers : [...servers].reverse();
        for (const s of order) {
          ctx.log(`round ${round + 1}: ${s.key} latency (1 in flight)`);
          s.runs.latency.push(await dnsLoad({ address: '127.0.0.1', port: s.port, names, inFlight: 1, seconds: p.seconds }));
          ctx.log(`round ${round + 1}: ${s.key} throughput (${p['in-flight']} in flight)`);
          const cpu0 = cpuSecondsOf(s.pid);
          const r = await dnsperf({ address: '127.0.0.1', port: s.port, queryFile, inFlight: p['in-flight'], seconds: p.seconds });
          s.runs.throughput.push(r);
          s.runs.cpuPerAnswer.push((cpuSecondsOf(s.pid) - cpu0) / Math.max(1, r.completed));
        }
      }
      await ours.stop();
      await dnsmasq.stop();
      if (pinned) execFileSync('taskset', ['-a', '-p', '-c', `0-${os.cpus().length - 1}`, String(process.pid)], { stdio: 'ignore' });

      const rows: string[][] = [];
      const summary = new Map<string, { p50: number; p99: number; qps: number; wrong: number }>();
      for (const s of servers) {
        // Hundreds of thousands of samples: quantiles only (summarize's min/max spread them as arguments).
        const all = s.runs.latency.flatMap((r) => r.latenciesMs);
        const lat = { median: quantile(all, 0.5), p99: quantile(all, 0.99) };
        const thr = s.runs.throughput.map((r) => r.qps);
        const best = Math.max(...thr);
        // Every name asked exists: a reply other than NOERROR is as wrong as a wrong address.
        const wrong = s.runs.latency.reduce((a, r) => a + r.wrong + r.lost, 0) + s.runs.throughput.reduce((a, r) => a + r.lost + (r.completed - r.noerror), 0);
        summary.set(s.key, { p50: lat.median, p99: lat.p99, qps: best, wrong });
        const cpuUs = s.runs.cpuPerAnswer.map((x) => fmt(x * 1e6, 1)).join(', ');
        rows.push([s.key, fmt(lat.median, 3), fmt(lat.p99, 3), thr.map((x) => fmt(x, 0)).join(', '), cpuUs, String(wrong)]);
      }
      const o = summary.get('tsoverlay')!;
      const d = summary.get('dnsmasq')!;
      const tables: BenchTable[] = [
        {
          title: `DNS with ${p.names} names (A queries for random names over UDP on loopback)`,
          columns: ['server', 'latency p50 (ms, 1 in flight)', 'latency p99 (ms)', `throughput per run (answers/s, dnsperf, ${p['in-flight']} in flight)`, 'server CPU per answer (µs, per run)', 'wrong or lost replies'],
          rows,
        },
      ];
      const targets: TargetResult[] = [target('DNS throughput tsoverlay / dnsmasq (best run each)', ratio(o.qps, d.qps), '>=', 1.0)];
      const notes = [
        `tsoverlay: the names view over an embedded store holding ${p.names} endpoint and names records, and the DNS server, in one node process run with the daemon's node flags (bench/lib/dns-serve.ts). dnsmasq ${firstLine(['/usr/sbin/dnsmasq', '--version'])}: \`--no-resolv --no-hosts --addn-hosts=<the same names> --local-ttl=0\`. Every name is asked once before the measured runs. Latency: bench/lib/dns-load.ts in the benchmark process; throughput: dnsperf ${dnsperfVersion()} (\`-q ${p['in-flight']}\`, 100,000 queries for random names, looped)${pinned ? '; the generators pinned to the first CPU, each server to the second' : ', sharing the CPUs with the server'}. Throughput ratio ${fmtRatio(ratio(o.qps, d.qps))}.`,
      ];
      let complete = o.wrong === 0 && d.wrong === 0;
      if (p.convergence > 0) {
        const conv = await measureConvergence(p.convergence, ctx.log);
        tables.push(conv.table);
        targets.push(...conv.targets);
        notes.push(...conv.notes);
        complete = complete && conv.complete;
      }
      return { tables, targets, notes, complete };
    },
  );
}

function firstLine(argv: string[]): string {
  const r = runSync(argv, { allowFailure: true });
  return (r.stdout || r.stderr).split('\n')[0]?.trim() ?? 'unknown';
}
