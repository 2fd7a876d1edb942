/**
 * One DNS query in, one decision out: a reply built from the network's names, "forward it",
 * or "drop it". Pure (no sockets), so that every malformed or hostile message can be tested
 * and fuzzed without a network.
 */
import * as packet from 'dns-packet';
import ipaddr from 'ipaddr.js';
import type { ZoneView } from './types';

/** Classic DNS over UDP without EDNS (RFC 1035 §4.2.1). */
export const UDP_DEFAULT_SIZE = 512;
/** The most we ever put in one UDP datagram, whatever EDNS advertises (DNS flag day 2020). */
export const UDP_MAX_SIZE = 1232;
export const TCP_MAX_SIZE = 65535;
/**
 * Names follow containers (stop, rename, disconnect): a cached answer would outlive the
 * container it names, so answers carry TTL 0 and negative answers no SOA (nothing caches them).
 */
export const ANSWER_TTL = 0;

const RCODE = { NOERROR: 0, FORMERR: 1, SERVFAIL: 2, NXDOMAIN: 3, NOTIMP: 4, REFUSED: 5 } as const;
export type Rcode = keyof typeof RCODE;

const QR = 0x8000;
const OPCODE_MASK = 0x7800;
const RD = 0x0100;
const CD = 0x0010;
const HEADER_SIZE = 12;

export type Decision =
  | { kind: 'reply'; message: Buffer; rcode: Rcode }
  | { kind: 'forward' }
  | { kind: 'drop'; reason: string };

/** Reads the id of a message (the first two bytes), or undefined if it is too short. */
export function messageId(buf: Buffer): number | undefined {
  return buf.length >= 2 ? buf.readUInt16BE(0) : undefined;
}

/** A header-only reply (no question): for messages whose question cannot be trusted. */
function headerReply(query: Buffer, rcode: Rcode): Buffer {
  const out = Buffer.alloc(HEADER_SIZE);
  out.writeUInt16BE(query.readUInt16BE(0), 0);
  const flags = query.readUInt16BE(2);
  out.writeUInt16BE(QR | (flags & (OPCODE_MASK | RD)) | RCODE[rcode], 2);
  return out;
}

function isOpt(a: packet.Answer): a is packet.OptAnswer {
  return a.type === 'OPT';
}

/**
 * Decides what to do with `query` (a whole DNS message as received). `transport` sets the
 * size limit of the reply: over UDP a reply that does not fit is truncated with the TC bit,
 * which tells the client to ask again over TCP.
 */
export function handleQuery(query: Buffer, view: ZoneView, transport: 'udp' | 'tcp'): Decision {
  if (query.length < HEADER_SIZE) return { kind: 'drop', reason: 'short' };
  try {
    return decide(query, view, transport);
  } catch {
    // A message the codec accepted but cannot write back: answer rather than leave the client waiting.
    return reply(headerReply(query, 'SERVFAIL'), 'SERVFAIL');
  }
}

function decide(query: Buffer, view: ZoneView, transport: 'udp' | 'tcp'): Decision {
  const flags = query.readUInt16BE(2);
  // Never answer a response: two servers answering each other's replies would loop for ever.
  if (flags & QR) return { kind: 'drop', reason: 'response' };
  if ((flags & OPCODE_MASK) !== 0) return reply(headerReply(query, 'NOTIMP'), 'NOTIMP');
  let decoded: packet.DecodedPacket;
  try {
    decoded = packet.decode(query);
  } catch {
    return reply(headerReply(query, 'FORMERR'), 'FORMERR');
  }
  const questions = decoded.questions ?? [];
  const question = questions[0];
  if (questions.length !== 1 || !question) return reply(headerReply(query, 'FORMERR'), 'FORMERR');
  const opts = (decoded.additionals ?? []).filter(isOpt);
  if (opts.length > 1) return reply(headerReply(query, 'FORMERR'), 'FORMERR');
  const opt = opts[0];

  const name = normalizeName(question.name);
  if (name === undefined) return reply(headerReply(query, 'FORMERR'), 'FORMERR');
  const answerable = answerFromView(name, question.name, question.type, view);
  if (answerable === undefined) return { kind: 'forward' };
  // Names of the zone exist only in class IN; another class (CH version.bind…) is not ours to
  // answer. Header only: the codec cannot write every class back as it came.
  if (question.class !== 'IN') return reply(headerReply(query, 'REFUSED'), 'REFUSED');
  const rcode: Rcode = answerable === null ? 'NXDOMAIN' : 'NOERROR';
  const answers = answerable ?? [];

  const limit =
    transport === 'tcp' ? TCP_MAX_SIZE : opt ? Math.min(Math.max(opt.udpPayloadSize, UDP_DEFAULT_SIZE), UDP_MAX_SIZE) : UDP_DEFAULT_SIZE;
  const base: packet.Packet = {
    type: 'response',
    id: decoded.id ?? 0,
    // Authoritative for the zone; recursion is available (through the forwarder).
    flags: packet.AUTHORITATIVE_ANSWER | packet.RECURSION_AVAILABLE | (flags & (RD | CD)) | RCODE[rcode],
    questions: [question],
    answers,
    authorities: [],
    // A query with EDNS gets EDNS back (RFC 6891 §7), advertising what we accept over UDP.
    additionals: opt ? [{ type: 'OPT', name: '.', udpPayloadSize: UDP_MAX_SIZE, extendedRcode: 0, ednsVersion: 0, flags: 0, flag_do: false, options: [] }] : [],
  };
  let message = packet.encode(base);
  if (message.length > limit) {
    // Whole records only, as many as fit; TC tells the client the set is incomplete.
    let keep = answers.length;
    do {
      keep = Math.max(0, Math.min(keep - 1, Math.floor((keep * limit) / message.length)));
      message = packet.encode({ ...base, flags: (base.flags ?? 0) | packet.TRUNCATED_RESPONSE, answers: answers.slice(0, keep) });
    } while (message.length > limit && keep > 0);
    if (message.length > limit) {
      // Even the question does not fit (a name near 255 bytes in 512): header only, still TC.
      const head = headerReply(query, rcode);
      head.writeUInt16BE(head.readUInt16BE(2) | packet.TRUNCATED_RESPONSE, 2);
      message = head;
    }
  }
  return reply(message, rcode);
}

function reply(message: Buffer, rcode: Rcode): Decision {
  return { kind: 'reply', message, rcode };
}

/** Lower case, no trailing dot; undefined for names no resolver would send. */
export function normalizeName(name: string): string | undefined {
  const n = name.toLowerCase().replace(/\.$/, '');
  if (n.length > 253) return undefined;
  return n;
}

/**
 * The answer records for `name`/`type` from the view: an array (possibly empty: the name
 * exists, not with that type), null (NXDOMAIN) or undefined (not ours: forward).
 */
function answerFromView(name: string, owner: string, type: string, view: ZoneView): packet.Answer[] | null | undefined {
  const reverse = reverseAddress(name);
  if (reverse !== undefined) {
    const names = view.lookupAddress(reverse);
    if (names === undefined || names === null) return names;
    return type === 'PTR' || type === 'ANY' ? names.map((data) => ({ type: 'PTR', name: owner, ttl: ANSWER_TTL, class: 'IN', data })) : [];
  }
  if (name === '') return undefined; // the root: upstream's business
  const found = view.lookupName(name);
  if (found === undefined || found === null) return found;
  const out: packet.Answer[] = [];
  if (type === 'A' || type === 'ANY') for (const data of found.v4) out.push({ type: 'A', name: owner, ttl: ANSWER_TTL, class: 'IN', data });
  if (type === 'AAAA' || type === 'ANY') for (const data of found.v6) out.push({ type: 'AAAA', name: owner, ttl: ANSWER_TTL, class: 'IN', data });
  return out;
}

/** `4.3.2.1.in-addr.arpa` → `1.2.3.4`; 32 nibbles under ip6.arpa → a full IPv6 address; else undefined. */
export function reverseAddress(name: string): string | undefined {
  if (name.endsWith('.in-addr.arpa')) {
    const labels = name.slice(0, -'.in-addr.arpa'.length).split('.');
    if (labels.length !== 4 || !labels.every((l) => /^(0|[1-9]\d{0,2})$/.test(l) && Number(l) <= 255)) return undefined;
    return labels.reverse().join('.');
  }
  if (name.endsWith('.ip6.arpa')) {
    const nibbles = name.slice(0, -'.ip6.arpa'.length).split('.');
    if (nibbles.length !== 32 || !nibbles.every((n) => /^[0-9a-f]$/.test(n))) return undefined;
    const hex = nibbles.reverse().join('');
    const groups: string[] = [];
    for (let i = 0; i < 32; i += 4) groups.push(hex.slice(i, i + 4));
    // The RFC 5952 form: the one the names view keys addresses by.
    return ipaddr.IPv6.parse(groups.join(':')).toRFC5952String();
  }
  return undefined;
}

/** A SERVFAIL for a query we could not forward (the question echoed when it decodes). */
export function servfail(query: Buffer): Buffer | undefined {
  if (query.length < HEADER_SIZE) return undefined;
  try {
    const decoded = packet.decode(query);
    const flags = query.readUInt16BE(2);
    return packet.encode({
      type: 'response',
      id: decoded.id ?? 0,
      flags: packet.RECURSION_AVAILABLE | (flags & (RD | CD)) | RCODE.SERVFAIL,
      questions: decoded.questions ?? [],
      answers: [],
      authorities: [],
      additionals: [],
    });
  } catch {
    return headerReply(query, 'SERVFAIL');
  }
}
