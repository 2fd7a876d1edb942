/** The kernel side of tsoverlay: see dataplane.ts. */
export { Dataplane, DEFAULT_NETNS_DIR, BRIDGE_NAME, VXLAN_NAME, networkPrefix, vethNames } from './dataplane';
export type { DataplaneOptions, OverlayListing } from './dataplane';
export type { Miss, PeerChangeResult } from './peers';
export * from './types';
