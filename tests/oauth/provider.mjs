// A real OAuth 2.0 / OpenID provider (npm `oidc-provider`) for the minted
// credential tests, over HTTPS with the test's certificate.
//
// Environment: STATE (a directory: signing keys and the client key are made
// there on first start and reused after, so a restart keeps them), CERT and
// KEY (PEM), PORT (0 for any; the line `listening PORT` says which), TTL
// (seconds of access token life), CLIENT_SECRET, RESOURCE (the one resource
// server), REVOKED (client ids left out: a revoked client).
//
// Refresh tokens rotate on every use; a reused one revokes its grant (as
// oidc-provider does). At start, one refresh token per name in STATE/
// refresh-*.txt is issued to `cg-refresh` for the user `user-1` (as if the
// user had consented in an authorization code flow), and every grant error
// is appended to STATE/grant-errors.txt.
import crypto from 'node:crypto';
import fs from 'node:fs';
import https from 'node:https';
import path from 'node:path';
import * as jose from 'jose';
import Provider, { errors } from 'oidc-provider';

const state = process.env.STATE;
const ttl = Number(process.env.TTL || '300');
const resource = process.env.RESOURCE;
const revoked = new Set((process.env.REVOKED || '').split(',').filter(Boolean));

async function keyFile(name, alg) {
  const file = path.join(state, name);
  if (!fs.existsSync(file)) {
    const { privateKey } = await jose.generateKeyPair(alg, { extractable: true });
    const jwk = await jose.exportJWK(privateKey);
    jwk.kid = name.replace('.json', '');
    jwk.alg = alg;
    fs.writeFileSync(file, JSON.stringify(jwk));
    // Each key is also written as PKCS#8 PEM, for clawgate.
    fs.writeFileSync(path.join(state, name.replace('.json', '.pem')), await jose.exportPKCS8(privateKey));
  }
  return JSON.parse(fs.readFileSync(file, 'utf8'));
}

function publicJwk(jwk) {
  const { d, p, q, dp, dq, qi, ...pub } = jwk;
  return pub;
}

const signing = await keyFile('provider-key.json', 'RS256');
const clientKey = await keyFile('client-key.json', 'RS256');
// A service account's key, for the RFC 7523 §2.1 JWT bearer grant.
const saKey = await keyFile('sa-key.json', 'RS256');
const SA_EMAIL = 'clawgate-sa@example-project.iam.gserviceaccount.com';
const JWT_BEARER = 'urn:ietf:params:oauth:grant-type:jwt-bearer';
fs.writeFileSync(path.join(state, 'provider-jwks.json'), JSON.stringify({ keys: [publicJwk(signing)] }));

const base = {
  grant_types: ['client_credentials'],
  response_types: [],
  redirect_uris: [],
  scope: 'echo.read echo.write',
};
const clients = [
  { ...base, client_id: 'cg-basic', client_secret: process.env.CLIENT_SECRET, token_endpoint_auth_method: 'client_secret_basic' },
  { ...base, client_id: 'cg-post', client_secret: process.env.CLIENT_SECRET, token_endpoint_auth_method: 'client_secret_post' },
  { ...base, client_id: 'cg-jwt', token_endpoint_auth_method: 'private_key_jwt', jwks: { keys: [publicJwk(clientKey)] } },
  { ...base, client_id: 'cg-sa', grant_types: [JWT_BEARER], token_endpoint_auth_method: 'none' },
  {
    ...base,
    client_id: 'cg-refresh',
    client_secret: process.env.CLIENT_SECRET,
    grant_types: ['authorization_code', 'refresh_token'],
    response_types: ['code'],
    redirect_uris: ['https://client.test/callback'],
    token_endpoint_auth_method: 'client_secret_basic',
  },
].filter((c) => !revoked.has(c.client_id));

// The issuer needs the port, so the server listens first and the provider
// is built on it.
let handler = (_req, res) => { res.statusCode = 503; res.end(); };
const server = https.createServer(
  { cert: fs.readFileSync(process.env.CERT), key: fs.readFileSync(process.env.KEY) },
  (req, res) => handler(req, res),
);
server.listen(Number(process.env.PORT || '0'), '127.0.0.1', async () => {
  const { port } = server.address();
  const provider = new Provider(`https://localhost:${port}`, {
    clients,
    jwks: { keys: [signing] },
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      resourceIndicators: {
        enabled: true,
        defaultResource: (_ctx, _client, oneOf) => oneOf,
        useGrantedResource: () => true,
        getResourceServerInfo: (_ctx, indicator) => {
          if (indicator !== resource) throw new errors.InvalidTarget();
          return { scope: 'echo.read echo.write', audience: resource, accessTokenTTL: ttl, accessTokenFormat: 'jwt' };
        },
      },
    },
    scopes: ['offline_access', 'echo.read', 'echo.write'],
    ttl: { ClientCredentials: ttl },
    rotateRefreshToken: true,
  });
  // oidc-provider has no JWT bearer grant of its own: this one checks the
  // assertion as RFC 7523 §3 says (signature by the service account's key,
  // iss, aud = the token endpoint, exp) and issues a JWT access token for the
  // resource server, as the client credentials grant does.
  const saPublic = crypto.createPublicKey({ key: publicJwk(saKey), format: 'jwk' });
  provider.registerGrantType(JWT_BEARER, async (ctx) => {
    const { assertion, scope } = ctx.oidc.params;
    let payload;
    try {
      ({ payload } = await jose.jwtVerify(assertion, saPublic, {
        issuer: SA_EMAIL,
        audience: `https://localhost:${port}/token`,
        algorithms: ['RS256'],
        maxTokenAge: '1h',
      }));
    } catch (e) {
      throw new errors.InvalidGrant(`assertion rejected (${e.code})`);
    }
    const offered = ['echo.read', 'echo.write'];
    const granted = String(scope || payload.scope || '').split(' ').filter((s) => offered.includes(s)).join(' ');
    const token = new provider.ClientCredentials({ client: ctx.oidc.client, scope: granted || undefined });
    token.resourceServer = new provider.ResourceServer(resource, {
      scope: offered.join(' '), audience: resource, accessTokenTTL: ttl, accessTokenFormat: 'jwt',
    });
    const value = await token.save();
    console.log(`jwt bearer grant for sub ${payload.sub}`);
    ctx.body = { access_token: value, expires_in: token.expiration, token_type: 'Bearer', scope: granted };
  }, ['assertion', 'scope']);
  provider.on('grant.error', (_ctx, err) => {
    console.log(`grant error: ${err.error}`);
    fs.appendFileSync(path.join(state, 'grant-errors.txt'), `${err.error}: ${err.error_description}\n`);
  });
  // The refresh tokens a consenting user would have left behind.
  for (const name of ['refresh-file', 'refresh-sm']) {
    const client = await provider.Client.find('cg-refresh');
    if (!client) break;
    const grant = new provider.Grant({ accountId: 'user-1', clientId: 'cg-refresh' });
    grant.addOIDCScope('offline_access');
    grant.addResourceScope(resource, 'echo.read');
    const grantId = await grant.save();
    const rt = new provider.RefreshToken({
      accountId: 'user-1', client, grantId, gty: 'authorization_code',
      scope: 'offline_access echo.read', resource,
    });
    fs.writeFileSync(path.join(state, `${name}.txt`), `${await rt.save()}\n`);
  }
  provider.on('server_error', (_ctx, err) => console.log(`server error: ${err}`));
  provider.on('access_token.issued', () => console.log('issued'));
  handler = provider.callback();
  console.log(`listening ${port}`);
});
