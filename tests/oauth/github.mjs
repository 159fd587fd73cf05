// A local stand-in for GitHub's App authentication, checking what GitHub
// documents: `POST /app/installations/{id}/access_tokens` takes an App JWT
// (RS256, verified with the App's public key; `iss` the App id; `exp` in the
// future and at most ten minutes after `iat`) and answers 201 with an
// installation token restricted to the repositories and permissions asked
// for. The same server is the API: `GET /repos/{owner}/{repo}/...` needs
// such a token, for that repository.
//
// Environment: STATE (the App's key pair is made there on first start:
// app-key.pem, and wrong-key.pem, a key GitHub does not know), CERT, KEY,
// APP_ID, INSTALLATION_ID, TTL (token seconds). Prints `listening PORT`.
// Every token issued is appended to STATE/tokens.txt.
import crypto from 'node:crypto';
import fs from 'node:fs';
import https from 'node:https';
import path from 'node:path';
import * as jose from 'jose';

const state = process.env.STATE;
const appId = process.env.APP_ID;
const installation = process.env.INSTALLATION_ID;
const ttl = Number(process.env.TTL || '3600');
const tokens = new Map();

async function pem(name) {
  const file = path.join(state, name);
  if (!fs.existsSync(file)) {
    const { privateKey } = await jose.generateKeyPair('RS256', { extractable: true, modulusLength: 2048 });
    fs.writeFileSync(file, await jose.exportPKCS8(privateKey));
  }
  return fs.readFileSync(file, 'utf8');
}
const appKey = crypto.createPublicKey(await pem('app-key.pem'));
await pem('wrong-key.pem');

function reply(res, status, body) {
  res.statusCode = status;
  res.setHeader('content-type', 'application/json');
  res.end(JSON.stringify(body));
}

async function readJson(req) {
  let text = '';
  for await (const chunk of req) text += chunk;
  return text ? JSON.parse(text) : {};
}

async function accessTokens(req, res, id) {
  const auth = req.headers.authorization || '';
  const jwt = auth.startsWith('Bearer ') ? auth.slice(7) : '';
  let payload;
  try {
    ({ payload } = await jose.jwtVerify(jwt, appKey, { algorithms: ['RS256'] }));
  } catch {
    return reply(res, 401, { message: 'A JSON web token could not be decoded' });
  }
  if (String(payload.iss) !== appId) return reply(res, 401, { message: "'Issuer' claim ('iss') must be an Integer" });
  if (typeof payload.iat !== 'number' || payload.exp - payload.iat > 600) {
    return reply(res, 401, { message: "'Expiration time' claim ('exp') is too far in the future" });
  }
  if (id !== installation) return reply(res, 404, { message: 'Not Found' });
  const body = await readJson(req);
  const permissions = body.permissions || { contents: 'read', metadata: 'read' };
  const repositories = body.repositories || ['widgets', 'gadgets'];
  const token = `ghs_${crypto.randomBytes(18).toString('base64url')}`;
  tokens.set(token, { repositories, permissions });
  fs.appendFileSync(path.join(state, 'tokens.txt'), `${token}\n`);
  return reply(res, 201, {
    token,
    expires_at: new Date(Date.now() + ttl * 1000).toISOString().replace(/\.\d+Z$/, 'Z'),
    permissions,
    repository_selection: 'selected',
    repositories: repositories.map((name) => ({ name })),
  });
}

function api(req, res) {
  const auth = req.headers.authorization || '';
  const grant = tokens.get(auth.replace(/^(Bearer|token) /, ''));
  if (!grant) return reply(res, 401, { message: 'Bad credentials' });
  const [, , , repo] = req.url.split('/');
  if (!grant.repositories.includes(repo)) return reply(res, 404, { message: 'Not Found' });
  return reply(res, 200, { ok: true, repo, permissions: grant.permissions, tokens_issued: tokens.size });
}

const server = https.createServer(
  { cert: fs.readFileSync(process.env.CERT), key: fs.readFileSync(process.env.KEY) },
  async (req, res) => {
    const m = req.url.match(/^\/app\/installations\/(\d+)\/access_tokens$/);
    if (m && req.method === 'POST') return accessTokens(req, res, m[1]);
    if (req.url.startsWith('/repos/')) return api(req, res);
    return reply(res, 404, { message: 'Not Found' });
  },
);
server.listen(0, '127.0.0.1', () => console.log(`listening ${server.address().port}`));
