// test/e2e/resilience-store.test.ts against a real Consul server instead of etcd (see test/helpers/engine-suite.ts).
import { onStoreBackend } from '../../helpers/engine-suite';

onStoreBackend('consul', () => require('../resilience-store.test'));
