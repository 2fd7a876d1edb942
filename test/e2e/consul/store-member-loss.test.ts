// test/e2e/store-member-loss.test.ts against three real Consul servers instead of an etcd cluster (see test/helpers/engine-suite.ts).
import { onStoreBackend } from '../../helpers/engine-suite';

onStoreBackend('consul', () => require('../store-member-loss.test'));
