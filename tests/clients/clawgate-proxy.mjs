// Preload for Node agents (OpenClaw, any script using fetch or undici):
// routes every request through clawgate with no change to the agent's code.
//
//   eval "$(clawgate env --agent NAME)"
//   NODE_OPTIONS="--import /path/to/clawgate-proxy.mjs" node agent.js
//
// It reads what `clawgate env` prints: HTTPS_PROXY, the CA bundle and the
// agent's certificate and key (which Node cannot take from the environment
// for a proxy). Place it beside a node_modules that holds undici.
import { readFileSync } from 'node:fs';
import { ProxyAgent, setGlobalDispatcher } from 'undici';

const env = process.env;
const ca = readFileSync(env.SSL_CERT_FILE ?? env.NODE_EXTRA_CA_CERTS);
setGlobalDispatcher(new ProxyAgent({
  uri: env.HTTPS_PROXY,
  proxyTls: {
    ca,
    cert: readFileSync(env.CLAWGATE_AGENT_CERT),
    key: readFileSync(env.CLAWGATE_AGENT_KEY),
  },
  requestTls: { ca },
}));
