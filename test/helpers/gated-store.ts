/**
 * A real store whose writes first pass a gate the test controls per key: held back (a stalled
 * store), slowed down (a loaded one), or failed. Reads, deletes and watches go straight through.
 */
import type { Store } from '../../src/store/store';

export function gatedWrites(store: Store, gate: (key: string) => Promise<void>): Store {
  return {
    get description() {
      return store.description;
    },
    get distributed() {
      return store.distributed;
    },
    get: (k) => store.get(k),
    list: (p) => store.list(p),
    put: async (k, v, o) => {
      await gate(k);
      return store.put(k, v, o);
    },
    create: async (k, v, o) => {
      await gate(k);
      return store.create(k, v, o);
    },
    compareAndSet: async (k, v, r, o) => {
      await gate(k);
      return store.compareAndSet(k, v, r, o);
    },
    delete: (k) => store.delete(k),
    compareAndDelete: (k, r) => store.compareAndDelete(k, r),
    deletePrefix: (p) => store.deletePrefix(p),
    watch: (p, l) => store.watch(p, l),
    grantLease: (t) => store.grantLease(t),
    close: () => store.close(),
  };
}
