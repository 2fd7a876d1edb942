// test/e2e/multi-host.test.ts against a real Consul server instead of etcd (see test/helpers/engine-suite.ts).
import { onStoreBackend } from '../../helpers/engine-suite';

onStoreBackend('consul', () => require('../multi-host.test'));
