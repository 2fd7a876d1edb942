import { ipToInt } from './subnet';

/**
 * The container MAC is derived from its IPv4 address, as Docker's overlay does:
 * 02:42 (locally administered, Docker's prefix) followed by the four address bytes,
 * so every host can compute a remote container's MAC from its IP alone.
 */
export function macFromIp(ip: string): string {
  const n = ipToInt(ip);
  const bytes = [0x02, 0x42, n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255];
  return bytes.map((b) => b.toString(16).padStart(2, '0')).join(':');
}

const MAC_PATTERN = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/;

/** Lower-case colon form, or undefined when the text is not a unicast MAC. */
export function normalizeMac(text: string): string | undefined {
  const mac = text.trim().toLowerCase().replace(/-/g, ':');
  if (!MAC_PATTERN.test(mac)) return undefined;
  if (parseInt(mac.slice(0, 2), 16) & 1) return undefined;
  if (mac === '00:00:00:00:00:00') return undefined;
  return mac;
}
