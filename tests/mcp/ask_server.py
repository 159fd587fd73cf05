"""An MCP server on the official Python SDK (PyPI `mcp`) for clawgate's ask
tests. Usage: ask_server.py PORT

`deploy` counts each execution on the server side; `deploy_count` tells
the count, so a test can see that an approved call ran exactly once.
"""

import sys

import uvicorn
from mcp.server.mcpserver import MCPServer
from mcp.server.transport_security import TransportSecuritySettings

PORT = int(sys.argv[1])
COUNT = {"deploy": 0}

mcp = MCPServer("clawgate-ask-server")


@mcp.tool(description="Deploy to an environment (asks for approval)")
def deploy(env: str) -> str:
    COUNT["deploy"] += 1
    return f"deployed {env}"


@mcp.tool(description="How many deploys ran")
def deploy_count() -> str:
    return str(COUNT["deploy"])


app = mcp.streamable_http_app(
    json_response=True,
    transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
)

uvicorn.run(app, host="127.0.0.1", port=PORT, log_level="warning", lifespan="on")
