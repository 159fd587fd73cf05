// A resource server for the minted credential tests: it accepts a call only
// with a bearer token the provider signed (its JWKS file), for this
// resource (audience), from the expected issuer, carrying the scope the
// path needs. Every distinct token it accepts is appended to STATE/tokens.txt,
// so the test can look for it where it must not be. A path containing
// `/echo` also reflects the Authorization header in the body.
//
// Environment: STATE, CERT, KEY, ISSUER, RESOURCE, SCOPE (the scope every
// call needs). Prints `listening PORT`.
import fs from 'node:fs';
import https from 'node:https';
import path from 'node:path';
import * as jose from 'jose';

const state = process.env.STATE;
const seen = new Set();

async function verify(req) {
  const auth = req.headers.authorization || '';
  if (!auth.startsWith('Bearer ')) return { status: 401, body: { error: 'no bearer token' } };
  const token = auth.slice(7);
  const jwks = jose.createLocalJWKSet(JSON.parse(fs.readFileSync(path.join(state, 'provider-jwks.json'), 'utf8')));
  try {
    const { payload } = await jose.jwtVerify(token, jwks, {
      issuer: process.env.ISSUER,
      audience: process.env.RESOURCE,
      typ: 'at+jwt',
    });
    const scopes = String(payload.scope || '').split(' ');
    if (!scopes.includes(process.env.SCOPE)) {
      return { status: 403, body: { error: 'insufficient_scope', scope: payload.scope } };
    }
    if (!seen.has(token)) {
      seen.add(token);
      fs.appendFileSync(path.join(state, 'tokens.txt'), `${token}\n`);
    }
    const body = { ok: true, client_id: payload.client_id, sub: payload.sub, scope: payload.scope, aud: payload.aud, tokens_seen: seen.size, path: req.url };
    // A debug endpoint that echoes the request's credential, as many APIs'
    // error bodies do: clawgate must not let the token reach the agent.
    if (req.url.includes('/echo')) body.authorization = auth;
    return { status: 200, body };
  } catch (e) {
    return { status: 401, body: { error: 'invalid_token', detail: e.code || String(e) } };
  }
}

const server = https.createServer(
  { cert: fs.readFileSync(process.env.CERT), key: fs.readFileSync(process.env.KEY) },
  async (req, res) => {
    const { status, body } = await verify(req);
    res.statusCode = status;
    res.setHeader('content-type', 'application/json');
    res.end(JSON.stringify(body));
  },
);
server.listen(0, '127.0.0.1', () => console.log(`listening ${server.address().port}`));
