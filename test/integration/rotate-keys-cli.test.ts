/**
 * `tsoverlay rotate-keys` is an operator's command: it may run on a machine that is no host of
 * the cluster, whose hostname is no valid host name (a bare VM or a container says `(none)`).
 * The real CLI in a UTS namespace of its own with that hostname must get as far as the store.
 */
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, test } from 'node:test';
import { PLUGIN_MAIN } from '../helpers/plugin';
import { run } from '../helpers/proc';

const root = process.getuid?.() === 0;
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tso-rotate-cli-'));
after(() => fs.rmSync(dir, { recursive: true, force: true }));

test('rotate-keys does not need a valid local hostname', { skip: root ? false : 'needs root (a UTS namespace)' }, async () => {
  const env = { ...process.env };
  delete env.TSOVERLAY_HOST_NAME;
  // The embedded store is refused after the options are read: that answer proves they were.
  const r = await run(['unshare', '-u', 'sh', '-c', 'echo "(none)" > /proc/sys/kernel/hostname && exec "$0" "$@"', process.execPath, PLUGIN_MAIN, 'rotate-keys', '--store', `local://${dir}`], {
    allowFailure: true,
    env,
  });
  const out = `${r.stdout}${r.stderr}`;
  assert.doesNotMatch(out, /invalid --host-name/);
  assert.match(out, /embedded store serves one host/);
  assert.equal(r.code, 1);
});
