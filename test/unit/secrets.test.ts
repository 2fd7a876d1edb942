/**
 * Secrets never leave the process through a message: URL credentials are redacted whatever
 * characters they hold, and the errors of store URL parsing, openStore and option parsing
 * quote no part of a password, token or key.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { parseConfig } from '../../src/config';
import { silentLogger } from '../../src/log';
import { openStore, parseStoreUrl, redactUrl, StoreUrlError } from '../../src/store/open';

const logger = silentLogger();

/** Passwords chosen to break naive redaction; none shares 3 characters with the hosts below. */
const NASTY = [
  'p@ss/wo:rd#1',
  'Qx7@@Zw@',
  'Fj%40Kq%2F', // percent-encoded "@" and "/"
  'Ty?v=9&k=Lm',
  'Rg,Hn,Jb',
  ':Wq:Vr:',
  'Zu#Yi/Ok@Pl',
  'Bö€ñ§ü',
  'Nv]Xc[Mz',
];

/** Every substring of `secret` of `min` characters or more (decoded too: what a parser sees). */
function pieces(secret: string, min = 3): string[] {
  const out = new Set<string>();
  const forms = [secret];
  try {
    forms.push(decodeURIComponent(secret));
  } catch {
    // not decodable: the raw form only
  }
  for (const f of forms) for (let i = 0; i + min <= f.length; i++) for (let j = i + min; j <= f.length; j++) out.add(f.slice(i, j));
  return [...out];
}

function assertNoPiece(text: string, secret: string, where: string): void {
  for (const p of pieces(secret)) assert.ok(!text.includes(p), `${where}: "${p}" of the secret appears in: ${text}`);
}

function urlsWith(password: string): string[] {
  return [
    `etcd://admin:${password}@etcd-a.example:2379`,
    `etcds://admin:${password}@[fd00::5]:2379,etcd-b.example:2379`,
    `etcd://admin:${password}@etcd-a.example:99999`,
    `etcd://admin:${password}@`,
    `etcd://admin:${password}@etcd-a.example/some/path`,
    `etcd://admin:${password}@etcd-a.example?x=1`,
    `consul://admin:${password}@consul-a.example:8500`,
    `etcd:admin:${password}@etcd-a.example`,
    `admin:${password}@etcd-a.example:2379`,
    `${password}@etcd-a.example`,
    `etcd://${password}@etcd-a.example`,
  ];
}

describe('redactUrl', () => {
  test('removes everything up to the last "@", whatever the password holds', () => {
    for (const pw of NASTY) {
      for (const url of urlsWith(pw)) assertNoPiece(redactUrl(url), pw, `redactUrl(${url})`);
    }
    assert.equal(redactUrl('etcd://u:p@ss/wo:rd#1@h1:2379,h2:2379'), 'etcd://h1:2379,h2:2379');
    assert.equal(redactUrl('etcds://u:a@b@[fd00::5]:2379'), 'etcds://[fd00::5]:2379');
    assert.equal(redactUrl('etcd://h1:2379'), 'etcd://h1:2379', 'nothing to redact');
    assert.equal(redactUrl('local:///var/lib/tsoverlay'), 'local:///var/lib/tsoverlay');
    assert.equal(redactUrl('etcd://h1:2379?token=Kd8s'), 'etcd://h1:2379?…', 'a query goes too');
  });

  test('parseStoreUrl takes the same userinfo: the password arrives whole, the hosts are the hosts', () => {
    for (const pw of NASTY) {
      if (pw.includes('%')) continue;
      const loc = parseStoreUrl(`etcds://admin:${pw}@[fd00::5]:2379,etcd-b.example`);
      assert.deepEqual(loc, {
        kind: 'etcd',
        secure: true,
        endpoints: [{ host: 'fd00::5', port: 2379 }, { host: 'etcd-b.example', port: 2379 }],
        username: 'admin',
        password: pw,
      }, pw);
    }
    const encoded = parseStoreUrl('etcd://admin:Fj%40Kq%2F@etcd-a.example');
    assert.ok(encoded.kind === 'etcd' && encoded.password === 'Fj@Kq/');
  });

  test('every StoreUrlError quotes no part of the password', () => {
    let errors = 0;
    for (const pw of [...NASTY, 'Lk%zzQp']) {
      for (const url of urlsWith(pw)) {
        try {
          parseStoreUrl(url, {});
        } catch (err) {
          assert.ok(err instanceof StoreUrlError, String(err));
          assertNoPiece(err.message, pw, url);
          errors++;
        }
      }
    }
    assert.ok(errors >= 60, `${errors} errors checked`);
  });
});

describe('openStore and option errors quote no secret', () => {
  test('etcd unreachable with credentials in the URL: description and call errors are clean', async () => {
    for (const pw of NASTY.slice(0, 3)) {
      const store = await openStore(`etcd://admin:${pw}@127.0.0.1:1`, { logger, timeoutMs: 300 });
      try {
        assert.equal(store.description, 'etcd://127.0.0.1:1');
        const err = await store.put('k', 'v').then(
          () => undefined,
          (e: unknown) => e,
        );
        assert.ok(err instanceof Error, 'the put fails');
        assertNoPiece(err.message, pw, 'put error');
      } finally {
        await store.close();
      }
    }
  });

  test('a TLS key that is neither a file nor PEM text is not quoted; a PEM with leading text is PEM', async () => {
    const keyish = 'MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7/secret+material';
    await assert.rejects(
      openStore('etcds://127.0.0.1:1', { logger, etcd: { certFile: '/nonexistent/cert.pem', keyFile: keyish } }),
      (err: unknown) => {
        assertNoPiece(String(err), keyish.slice(20, 60), 'key error');
        return true;
      },
    );
    await assert.rejects(
      openStore('etcds://127.0.0.1:1', { logger, etcd: { certFile: '/nonexistent/cert.pem', keyFile: '/nonexistent/key.pem' } }),
      /etcd certificate file \/nonexistent\/cert\.pem cannot be read: ENOENT/,
    );
  });

  test('the Consul token file: read, and its errors name the file only', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tso-secrets-'));
    try {
      const file = path.join(dir, 'token');
      fs.writeFileSync(file, 'Hq3-qwfp-tkn-Zr8\n', { mode: 0o600 });
      const store = await openStore('consul://127.0.0.1:1', { logger, timeoutMs: 300, env: { CONSUL_HTTP_TOKEN_FILE: file } });
      try {
        const err = await store.get('k').then(() => undefined, (e: unknown) => e);
        assert.ok(err instanceof Error);
        assertNoPiece(err.message, 'Hq3-qwfp-tkn-Zr8', 'consul error');
      } finally {
        await store.close();
      }
      await assert.rejects(
        openStore('consul://127.0.0.1:1', { logger, env: { CONSUL_HTTP_TOKEN_FILE: path.join(dir, 'missing') } }),
        /CONSUL_HTTP_TOKEN_FILE .*missing cannot be read: ENOENT/,
      );
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  test('option parsing: a stray argument (a password after a mistyped option) is not quoted', () => {
    const secret = 'Wd9-qzvx-Kp2';
    for (const argv of [
      ['--etcd-user', 'tso', secret],
      ['--etcd-password=', secret],
      [secret],
    ]) {
      assert.throws(() => parseConfig(argv, {}), (err: unknown) => {
        assert.match(String(err), /unexpected argument/);
        assertNoPiece(String(err), secret, argv.join(' '));
        return true;
      });
    }
  });
});
