/**
 * Runs the current benchmark command again inside a network and mount namespace of its own
 * (`unshare --net --mount --propagation private`): every device, namespace file (a bind mount)
 * and VXLAN socket it makes is then private to it and vanishes when it exits — even on SIGKILL —
 * and nothing it does can clash with other users of the machine (VNIs, UDP port 4789, names).
 */
import { spawn } from 'node:child_process';

const MARK = 'TSO_BENCH_ISOLATED';

/** True in the isolated copy. */
export function isolated(): boolean {
  return process.env[MARK] === '1';
}

/**
 * In the original process: starts the isolated copy, relays signals to it and exits with its
 * status; returns false. In the copy: returns true (go on with the benchmark).
 * `nodeFlags` are added to the copy's node flags (a benchmark that runs the plugin's code in its
 * own process passes the flags the plugin is deployed with).
 */
export function runIsolated(nodeFlags: readonly string[] = []): boolean {
  if (isolated()) return true;
  const execArgv = [...process.execArgv, ...nodeFlags.filter((f) => !process.execArgv.includes(f))];
  const child = spawn(
    'unshare',
    ['--net', '--mount', '--propagation', 'private', '--', process.execPath, ...execArgv, process.argv[1]!, ...process.argv.slice(2)],
    { stdio: 'inherit', env: { ...process.env, [MARK]: '1' } },
  );
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    process.on(sig, () => {
      if (child.exitCode === null) child.kill(sig);
    });
  }
  child.on('error', (err) => {
    process.stderr.write(`cannot start the isolated benchmark (unshare): ${err.message}\n`);
    process.exit(1);
  });
  child.on('exit', (code, signal) => process.exit(code ?? (signal ? 128 : 1)));
  return false;
}
