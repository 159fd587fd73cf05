// Fetches URLs through clawgate with undici's ProxyAgent: `proxyTls` carries
// the agent's client certificate, `requestTls` trusts the interception CA.
//
// usage: node undici_fetch.mjs PROXY_URL PROXY_CA CERT KEY TARGET_CA URL...
// prints one JSON line per URL: status and body.
import { readFileSync } from 'node:fs';
import { fetch, ProxyAgent } from 'undici';

const [proxyUrl, proxyCa, cert, key, targetCa, ...urls] = process.argv.slice(2);
const agent = new ProxyAgent({
  uri: proxyUrl,
  // CERT and KEY are `-` for the token listener: the run token rides in
  // PROXY_URL as the password, no client certificate.
  proxyTls: cert === '-'
    ? { ca: readFileSync(proxyCa) }
    : { ca: readFileSync(proxyCa), cert: readFileSync(cert), key: readFileSync(key) },
  requestTls: { ca: readFileSync(targetCa) },
});
for (const url of urls) {
  const res = await fetch(url, { dispatcher: agent, headers: { authorization: 'Bearer agent-own-token' } });
  console.log(JSON.stringify({ status: res.status, body: await res.text() }));
}
await agent.close();
