// Opens a WebSocket through clawgate with undici's ProxyAgent, sends one
// message and prints what comes back as JSON.
//
// usage: node undici_websocket.mjs PROXY_URL PROXY_CA CERT KEY TARGET_CA WSS_URL MESSAGE
import { readFileSync } from 'node:fs';
import { ProxyAgent, WebSocket } from 'undici';

const [proxyUrl, proxyCa, cert, key, targetCa, url, message] = process.argv.slice(2);
const agent = new ProxyAgent({
  uri: proxyUrl,
  // CERT and KEY are `-` for the token listener: the run token rides in
  // PROXY_URL as the password, no client certificate.
  proxyTls: cert === '-'
    ? { ca: readFileSync(proxyCa) }
    : { ca: readFileSync(proxyCa), cert: readFileSync(cert), key: readFileSync(key) },
  requestTls: { ca: readFileSync(targetCa) },
});
const ws = new WebSocket(url, { dispatcher: agent });
const timer = setTimeout(() => { console.log(JSON.stringify({ error: 'timeout' })); process.exit(2); }, 15000);
ws.onerror = (e) => { console.log(JSON.stringify({ error: String(e.message || e.type) })); process.exit(1); };
ws.onopen = () => ws.send(message);
ws.onmessage = (event) => {
  console.log(JSON.stringify({ echoed: String(event.data) }));
  ws.close(1000);
};
ws.onclose = async () => {
  clearTimeout(timer);
  await agent.close();
};
