/**
 * Batched UDP on a real loopback socket: datagrams queued on a descriptor come back in batches
 * of at most BATCH with their senders, replies leave with one call each to their own sender,
 * an oversized datagram is flagged, an empty queue is an empty batch, a bad descriptor an error.
 */
import assert from 'node:assert/strict';
import dgram from 'node:dgram';
import { test } from 'node:test';
import { bindUdpHere, closeFd } from '../../src/dns/netns-sockets';
import { BATCH, batchingAvailable, receiveBatch, RECV_SLOT, ReplyBatch, senderOf } from '../../src/dns/udp-batch';

/** A port free on `address` a moment ago (the descriptor under test is bound by libc, not node). */
async function freePort(type: 'udp4' | 'udp6', address: string): Promise<number> {
  const s = dgram.createSocket(type);
  await new Promise<void>((resolve) => s.bind(0, address, () => resolve()));
  const { port } = s.address();
  await new Promise<void>((resolve) => s.close(() => resolve()));
  return port;
}

/** Loopback delivery is quick but not synchronous: the datagrams sent are queued after this. */
async function settle(): Promise<void> {
  await new Promise((resolve) => setTimeout(resolve, 50));
}

for (const [type, address] of [['udp4', '127.0.0.1'], ['udp6', '::1']] as const) {
  test(`${type}: queued datagrams come in batches with their senders; replies go back to each`, { skip: !batchingAvailable() }, async () => {
    const port = await freePort(type, address);
    const fd = bindUdpHere(address, port);
    const client = dgram.createSocket(type);
    try {
      await new Promise<void>((resolve) => client.bind(0, address, () => resolve()));
      const count = BATCH + 30;
      for (let i = 0; i < count; i++) {
        const m = Buffer.alloc(7);
        m.writeUInt16BE(i, 0);
        m.write('query', 2);
        client.send(m, port, address);
      }
      client.send(Buffer.alloc(RECV_SLOT + 100, 7), port, address);
      await settle();

      const replies = new Map<number, Buffer>();
      const gotAll = new Promise<void>((resolve) => {
        client.on('message', (m) => {
          replies.set(m.readUInt16BE(0), m);
          if (replies.size === count) resolve();
        });
      });
      const sizes: number[] = [];
      let truncated = 0;
      const batch = new ReplyBatch();
      for (;;) {
        const got = receiveBatch(fd);
        if (got.length === 0) break;
        sizes.push(got.length);
        for (const r of got) {
          if (r.truncated) {
            truncated++;
            continue;
          }
          assert.equal(r.msg.toString('latin1', 2), 'query');
          assert.deepEqual(senderOf(r.from)?.port, client.address().port);
          // The reply's id is the query's, whatever the reply carried (a cached reply's is stale).
          assert.ok(batch.add(r.from, Buffer.from('\xff\xffreply', 'latin1'), r.msg));
        }
        assert.deepEqual(batch.flush(fd), { unsent: 0 });
      }
      assert.deepEqual(sizes, [BATCH, count + 1 - BATCH], 'at most BATCH per call, the queue emptied');
      assert.equal(truncated, 1, 'the oversized datagram is flagged');
      await Promise.race([gotAll, new Promise((resolve) => setTimeout(resolve, 2000))]);
      assert.equal(replies.size, count, 'every sender has its reply');
      for (const [id, m] of replies) assert.ok(id < count && m.toString('latin1', 2) === 'reply');
    } finally {
      client.close();
      closeFd(fd);
    }
  });
}

test('a sender address reads as node writes it', { skip: !batchingAvailable() }, async () => {
  const port = await freePort('udp6', '::1');
  const fd = bindUdpHere('::1', port);
  const client = dgram.createSocket('udp6');
  try {
    await new Promise<void>((resolve) => client.bind(0, '::1', () => resolve()));
    client.send(Buffer.from('x'), port, '::1');
    await settle();
    const [r] = receiveBatch(fd);
    assert.ok(r);
    const from = senderOf(r.from);
    assert.ok(from);
    // A non-canonical literal (0:0:…:1) is still the same address to node's send.
    assert.equal(from.port, client.address().port);
    assert.equal(from.address.split(':').map((g) => parseInt(g, 16)).join(','), '0,0,0,0,0,0,0,1');
  } finally {
    client.close();
    closeFd(fd);
  }
});

test('a bad descriptor is an error with its errno, not a crash', { skip: !batchingAvailable() }, () => {
  assert.throws(() => receiveBatch(-1), (err: NodeJS.ErrnoException) => err.code === 'EBADF');
});
