"""Fetches URLs through clawgate with httpx: the proxy's own TLS carries the
agent's client certificate, the target's TLS trusts the interception CA.

usage: httpx_fetch.py PROXY_URL PROXY_CA CERT KEY TARGET_CA URL...
prints one JSON line per URL: status, HTTP version and body.
"""
import json
import ssl
import sys

import httpx


def main():
    proxy_url, proxy_ca, cert, key, target_ca, *urls = sys.argv[1:]
    proxy_ctx = ssl.create_default_context(cafile=proxy_ca)
    # CERT and KEY are `-` for the token listener: the run token rides in
    # PROXY_URL as the password, no client certificate.
    if cert != "-":
        proxy_ctx.load_cert_chain(cert, key)
    target_ctx = ssl.create_default_context(cafile=target_ca)
    proxy = httpx.Proxy(proxy_url, ssl_context=proxy_ctx)
    with httpx.Client(proxy=proxy, verify=target_ctx, timeout=30) as client:
        for url in urls:
            r = client.get(url, headers={"authorization": "Bearer agent-own-token"})
            print(json.dumps({"status": r.status_code, "version": r.http_version, "body": r.text}), flush=True)


main()
