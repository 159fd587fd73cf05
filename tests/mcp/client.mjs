// An MCP client on the official TypeScript SDK (@modelcontextprotocol/sdk),
// the second client of clawgate's end-to-end tests.
// Usage: node client.mjs URL CA CERT KEY < steps.json
// Steps and output lines as tests/mcp/client.py.
import { readFileSync } from 'node:fs';
import { Agent, fetch } from 'undici';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';

const [url, ca, cert, key] = process.argv.slice(2);
const dispatcher = new Agent({
  connect: { ca: readFileSync(ca), cert: readFileSync(cert), key: readFileSync(key) },
});
const transport = new StreamableHTTPClientTransport(new URL(url), {
  fetch: (input, init) => fetch(input, { ...init, dispatcher }),
});
const client = new Client({ name: 'clawgate-test-ts', version: '1.0.0' });
await client.connect(transport);
const steps = JSON.parse(readFileSync(0, 'utf8'));
for (const step of steps) {
  let out;
  try {
    if (step.op === 'list') {
      const result = await client.listTools();
      out = { tools: result.tools.map((t) => t.name).sort() };
    } else if (step.op === 'call') {
      const result = await client.callTool({ name: step.tool, arguments: step.args ?? {} });
      out = { isError: Boolean(result.isError), text: result.content.map((c) => c.text ?? '').join('') };
    } else {
      out = { error: { message: 'unknown step' } };
    }
  } catch (e) {
    out = { error: { code: e.code, message: e.message, data: e.data } };
  }
  console.log(JSON.stringify(out));
}
await transport.terminateSession().catch(() => {});
await client.close();
