/** The kernel side of tsoverlay: see dataplane.ts. */
export { Dataplane, DEFAULT_NETNS_DIR, BRIDGE_NAME, VXLAN_NAME, networkPrefix, vethNames } from './dataplane';
export type { DataplaneOptions, OverlayListing, OverlayView } from './dataplane';
export type { FdbEntry, Miss, NeighbourEntry, PeerChangeResult } from './peers';
export * from './types';
