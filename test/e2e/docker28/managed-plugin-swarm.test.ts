// test/e2e/managed-plugin.test.ts and test/e2e/swarm.test.ts on Docker 28, in one process so
// that the plugin is built once for both (buildPlugin reuses this process's build): the build
// is most of either file's time (see test/helpers/engine-suite.ts).
import { describe } from 'node:test';
import { onEngine } from '../../helpers/engine-suite';

onEngine('28', () => {
  describe('managed plugin', () => {
    require('../managed-plugin.test');
  });
  describe('swarm', () => {
    require('../swarm.test');
  });
});
