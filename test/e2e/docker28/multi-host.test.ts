// test/e2e/multi-host.test.ts on Docker 28 (see test/helpers/engine-suite.ts).
import { onEngine } from '../../helpers/engine-suite';

onEngine('28', () => require('../multi-host.test'));
