/**
 * The node flags of src/node-flags.ts are how the plugin runs everywhere it is started: the
 * managed plugin's image and config.json, the systemd unit, the README's commands, `npm start`.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { NODE_FLAGS, V8_DEFAULT_INTERRUPT_BUDGET } from '../../src/node-flags';

const repo = path.resolve(__dirname, '../../..');
const read = (file: string) => fs.readFileSync(path.join(repo, file), 'utf8');
const MAIN = '/opt/tsoverlay/dist/src/cli/main.js';

test('the managed plugin (Dockerfile ENTRYPOINT, config.json entrypoint) runs node with NODE_FLAGS', () => {
  const entrypoint = /^ENTRYPOINT (\[.*\])$/m.exec(read('Dockerfile'))?.[1];
  assert.ok(entrypoint, 'Dockerfile has an exec-form ENTRYPOINT');
  const expected = ['/usr/local/bin/node', ...NODE_FLAGS, MAIN, 'serve'];
  assert.deepEqual(JSON.parse(entrypoint), expected);
  assert.deepEqual((JSON.parse(read('config.json')) as { entrypoint: string[] }).entrypoint, expected);
});

test('the systemd unit, npm start and the README commands run node with NODE_FLAGS', () => {
  const flags = NODE_FLAGS.join(' ');
  assert.equal(/^ExecStart=(.*)$/m.exec(read('plugin/systemd/tsoverlay.service'))?.[1], `/usr/bin/node ${flags} ${MAIN} serve`);
  const pkg = JSON.parse(read('package.json')) as { scripts: Record<string, string> };
  assert.equal(pkg.scripts.start, `node ${flags} dist/src/cli/main.js serve`);
  const commands = read('README.md').split('\n').filter((l) => /\bnode\b.*dist\/src\/cli\/main\.js serve/.test(l));
  assert.ok(commands.length > 0);
  for (const l of commands) assert.ok(l.includes(`node ${flags} dist/src/cli/main.js serve`), l);
});

test("the interrupt budget is 10 × this node's V8 default, and node accepts the flags", () => {
  const options = execFileSync(process.execPath, ['--v8-options'], { encoding: 'utf8' });
  const v8Default = /--interrupt-budget \(.*\)\n\s+type: int\s+default: --interrupt-budget=(\d+)/.exec(options)?.[1];
  assert.equal(Number(v8Default), V8_DEFAULT_INTERRUPT_BUDGET);
  assert.ok(NODE_FLAGS.includes(`--interrupt-budget=${10 * V8_DEFAULT_INTERRUPT_BUDGET}`));
  // A flag node does not know makes it exit before running anything.
  assert.equal(execFileSync(process.execPath, [...NODE_FLAGS, '-e', 'process.stdout.write("ok")'], { encoding: 'utf8' }), 'ok');
});
