// test/e2e/names-ipv6.test.ts on Docker 28 (see test/helpers/engine-suite.ts).
import { onEngine } from '../../helpers/engine-suite';

onEngine('28', () => require('../names-ipv6.test'));
