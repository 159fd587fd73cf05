// An agent that knows nothing about clawgate: it calls Node's global fetch.
// usage: node global_fetch.mjs URL   (prints status and body as JSON)
const response = await fetch(process.argv[2]);
console.log(JSON.stringify({ status: response.status, body: await response.text() }));
