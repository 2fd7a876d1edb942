/**
 * Name convergence across two hosts (part of bench/names.ts): how long after `docker run -d`
 * starts on host A does a container on host B resolve the new container's name through
 * tsoverlay's DNS (`--dns <gateway>`, via Docker's embedded resolver), compared with the time
 * to B's first ping reply from it in the same repetition.
 */
import { startBenchCluster } from './cluster';
import { removeContainer, timestampedLogs } from './docker-util';
import type { BenchTable, TargetResult } from './report';
import { target } from './report';
import { fmt, summarize } from './stats';
import { sleep, waitFor } from '../../test/helpers/proc';

const NET = 'namesnet';
const SUBNET = '10.205.0.0/24';
const GATEWAY = '10.205.0.1';

export async function measureConvergence(
  reps: number,
  log: (m: string) => void,
): Promise<{ table: BenchTable; targets: TargetResult[]; notes: string[]; complete: boolean }> {
  const bc = await startBenchCluster({ hosts: 2, tsoverlay: true, log });
  const [a, b] = bc.hosts as [(typeof bc.hosts)[number], (typeof bc.hosts)[number]];
  const samples: { run: number; lookup: number; ping: number }[] = [];
  let failures = 0;
  try {
    await bc.createTsNetwork(NET, SUBNET);
    // Warm: both hosts hold the network already; what is measured is one more container.
    for (const h of [a, b]) await bc.docker(h, ['run', '-d', '--name', `warm-${h.name}`, '--net', NET, bc.image, 'sleep', '1000000']);
    for (let i = 0; i < reps; i++) {
      const name = `conv${i}`;
      const ip = `10.205.0.${100 + i}`;
      const resolver = (
        await bc.docker(b, ['run', '-d', '--net', NET, '--dns', GATEWAY, bc.image, 'sh', '-c', `until nslookup ${name} >/dev/null 2>&1; do usleep 10000; done; echo resolved`])
      ).stdout.trim();
      const pinger = (await bc.docker(b, ['run', '-d', '--net', NET, bc.image, 'ping', '-i', '0.05', ip])).stdout.trim();
      await sleep(1500);
      const t0 = Date.now();
      await bc.docker(a, ['run', '-d', '--name', name, '--net', NET, '--ip', ip, bc.image, 'sleep', '1000000']);
      const run = Date.now() - t0;
      let lookup = NaN;
      let ping = NaN;
      try {
        await waitFor(
          async () => {
            const [r, p] = await Promise.all([timestampedLogs(b, resolver), timestampedLogs(b, pinger)]);
            const rl = r.find((l) => l.text.includes('resolved'));
            const pl = p.find((l) => l.text.includes(`bytes from ${ip}`));
            if (rl) lookup = rl.time - t0;
            if (pl) ping = pl.time - t0;
            return rl !== undefined && pl !== undefined;
          },
          { timeoutMs: 20_000, intervalMs: 200, what: `${name} resolved and answering on B` },
        );
        samples.push({ run, lookup, ping });
        log(`rep ${i + 1}/${reps}: docker run ${run} ms, lookup on B ${lookup.toFixed(0)} ms, ping on B ${ping.toFixed(0)} ms`);
      } catch (err) {
        failures++;
        log(`rep ${i + 1}: ${(err as Error).message} (lookup ${Number.isFinite(lookup) ? 'seen' : 'not seen'}, ping ${Number.isFinite(ping) ? 'seen' : 'not seen'})`);
        if (!Number.isFinite(lookup)) {
          // Asked straight at B's listener (not through Docker's embedded resolver): tells which of the two misses it.
          const direct = await bc.docker(b, ['run', '--rm', '--net', NET, bc.image, 'nslookup', name, GATEWAY], 30_000).catch((e: unknown) => ({ stdout: String(e) }));
          const embedded = await bc.docker(b, ['run', '--rm', '--net', NET, '--dns', GATEWAY, bc.image, 'nslookup', name], 30_000).catch((e: unknown) => ({ stdout: String(e) }));
          log(`asked at ${GATEWAY} directly: ${direct.stdout.replace(/\s+/g, ' ')}; through Docker's resolver: ${embedded.stdout.replace(/\s+/g, ' ')}`);
          // Inside the stuck container itself: a fresh process, and what its loop is doing.
          const inside = await bc.docker(b, ['exec', resolver, 'sh', '-c', `nslookup ${name} ${GATEWAY} 2>&1 | tail -3; echo ---; ip -o -4 addr; ip link; ip neigh; ip route; echo ---; ping -c 2 -W 1 ${GATEWAY} 2>&1 | tail -2`], 30_000).catch((e: unknown) => ({ stdout: String(e) }));
          log(`inside the polling container: ${inside.stdout.replace(/\s+/g, ' ')}`);
          const overlay = await bc.docker(b, ['run', '--rm', '--net', NET, bc.image, 'sh', '-c', `ip -o -4 addr; ip neigh; ping -c 2 -W 1 ${GATEWAY} 2>&1 | tail -2`], 30_000).catch((e: unknown) => ({ stdout: String(e) }));
          log(`a fresh container on B: ${overlay.stdout.replace(/\s+/g, ' ')}`);
        }
      }
      for (const id of [resolver, pinger]) await removeContainer(b, id);
      await removeContainer(a, name);
    }
  } finally {
    await bc.teardown();
  }
  const run = summarize(samples.map((s) => s.run));
  const lookup = summarize(samples.map((s) => s.lookup));
  const ping = summarize(samples.map((s) => s.ping));
  const after = summarize(samples.map((s) => s.lookup - s.run));
  const vsPing = summarize(samples.map((s) => s.lookup - s.ping));
  const row = (label: string, s: ReturnType<typeof summarize>) => [label, fmt(s.median, 0), fmt(s.p90, 0), fmt(s.p99, 0), fmt(s.max, 0)];
  return {
    table: {
      title: `Name convergence on two hosts (${samples.length} of ${reps} repetitions; ms from the start of \`docker run -d\` on A)`,
      columns: ['measurement', 'median (ms)', 'p90 (ms)', 'p99 (ms)', 'max (ms)'],
      rows: [
        row('a: `docker run -d` on A returns', run),
        row('b: first successful lookup on B', lookup),
        row('c: first ping reply on B', ping),
        row('b − a (after docker run returned)', after),
        row('b − c (lookup after ping)', vsPing),
      ],
    },
    targets: [
      target('repetitions in which B resolved the name', samples.length, '>=', reps, ''),
      target('name resolvable on B, max over repetitions of (b − a)', after.max, '<=', 100, 'ms'),
    ],
    notes: [
      `B loops \`nslookup <name>\` (busybox, through Docker's embedded resolver, \`--dns ${GATEWAY}\`, 10 ms between tries) and \`ping -i 0.05 <address>\`; times are Docker's log timestamps on B of the first success. ${failures} repetition(s) did not converge within 20 s.`,
    ],
    complete: failures === 0 && samples.length === reps,
  };
}
