"""An agent that knows nothing about clawgate: one GET with httpx or requests,
configured by the environment alone (HTTPS_PROXY, SSL_CERT_FILE,
REQUESTS_CA_BUNDLE).

usage: env_fetch.py httpx|requests URL   (prints status and body as JSON)
"""
import json
import sys

library, url = sys.argv[1:3]
if library == "httpx":
    import httpx

    r = httpx.get(url, timeout=30)
    print(json.dumps({"status": r.status_code, "body": r.text}))
else:
    import requests

    r = requests.get(url, timeout=30)
    print(json.dumps({"status": r.status_code, "body": r.text}))
