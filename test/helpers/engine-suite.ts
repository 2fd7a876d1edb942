/**
 * The engine matrix: `npm test` runs every end-to-end file in test/e2e on Debian's Docker
 * 20.10 and the files in test/e2e/docker28 again on Docker 28. Each of those is one line that
 * loads the 20.10 file inside `onEngine('28', …)`: the file's hooks and tests then register
 * under a suite named "docker 28", and every host it starts runs the 28 engine (the harness
 * reads TSO_ENGINE when it starts a host). One file, one engine, one process: nothing is shared.
 */
import { describe } from 'node:test';
import type { EngineName } from './docker';

export function onEngine(engine: EngineName, load: () => unknown): void {
  process.env.TSO_ENGINE = engine;
  describe(`docker ${engine}`, () => {
    load();
  });
}

/**
 * The store matrix: the files in test/e2e/consul load an etcd-backed e2e file with
 * TSO_STORE_BACKEND=consul, under a suite named "consul": the same flow against a real Consul
 * server (test/helpers/consul.ts) instead of etcd.
 */
export function onStoreBackend(backend: 'consul', load: () => unknown): void {
  process.env.TSO_STORE_BACKEND = backend;
  describe(backend, () => {
    load();
  });
}
