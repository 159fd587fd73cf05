"""An MCP client on the official Python SDK (PyPI `mcp`), for clawgate's
end-to-end tests.

Usage: client.py URL CA CERT KEY MODE < steps.json
MODE is `legacy` (initialize, sessions) or a modern version (`2026-07-28`).
Each step is {"op": "list"} | {"op": "call", "tool", "args"} |
{"op": "read", "uri"} | {"op": "prompt", "name", "args"}; prints one JSON
line per step: tool names, a result, or the JSON-RPC error it met.
"""

import asyncio
import json
import ssl
import sys

import httpx2
import mcp_types as types
from mcp.client.client import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

URL, CA, CERT, KEY, MODE = sys.argv[1:6]


def error_of(e):
    err = getattr(e, "error", None)
    if err is None:
        return {"error": {"message": str(e)}}
    return {"error": {"code": err.code, "message": err.message, "data": err.data}}


async def accept(context, params):
    # Answers an elicitation: the server's request came through clawgate
    # inside the stream, and this response goes back through it.
    return types.ElicitResult(action="accept", content={"answer": "yes"})


async def main():
    steps = json.load(sys.stdin)
    context = ssl.create_default_context(cafile=CA)
    context.load_cert_chain(CERT, KEY)
    # The agent's own token: clawgate must remove it when it injects one.
    headers = {"Authorization": "Bearer agent-own-token"}
    http = httpx2.AsyncClient(verify=context, headers=headers, timeout=httpx2.Timeout(30, read=300))
    async with http:
        transport = streamable_http_client(URL, http_client=http)
        async with Client(transport, mode=MODE, cache=None, elicitation_callback=accept) as client:
            for step in steps:
                try:
                    if step["op"] == "list":
                        result = await client.list_tools()
                        out = {"tools": sorted(t.name for t in result.tools)}
                    elif step["op"] == "call":
                        result = await client.call_tool(step["tool"], step.get("args", {}))
                        text = "".join(getattr(c, "text", "") for c in result.content)
                        out = {"isError": bool(result.is_error), "text": text}
                    elif step["op"] == "read":
                        result = await client.read_resource(step["uri"])
                        out = {"text": "".join(getattr(c, "text", "") for c in result.contents)}
                    elif step["op"] == "prompt":
                        result = await client.get_prompt(step["name"], step.get("args", {}))
                        out = {"messages": len(result.messages)}
                    else:
                        out = {"error": {"message": "unknown step"}}
                except MCPError as e:
                    out = error_of(e)
                print(json.dumps(out), flush=True)


asyncio.run(main())
