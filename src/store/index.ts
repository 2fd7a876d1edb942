export * from './store';
export { openStore, parseStoreUrl, redactUrl, StoreUrlError } from './open';
export type { OpenStoreOptions, EtcdConnectOptions, StoreLocation, HostPort } from './open';
export { LocalStore, StoreLockedError } from './local';
export type { LocalStoreOptions } from './local';
export { EtcdStore } from './etcd';
export type { EtcdStoreOptions, EtcdTlsOptions, EtcdAuthOptions } from './etcd';
export { ConsulStore, CONSUL_MIN_TTL_SECONDS } from './consul';
export type { ConsulStoreOptions } from './consul';
