#!/usr/bin/env python3
"""fakehttps.py PORT CERT KEY STATUS - an HTTPS server on 127.0.0.1:PORT that
answers every request with STATUS and a DPS-style JSON error body (a stamp
answering 500, for tests of callers' retries). Counts requests on stdout."""
import http.server
import json
import ssl
import sys


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def answer(self):
        n = int(self.headers.get("Content-Length") or 0)
        if n:
            self.rfile.read(n)
        body = json.dumps({"errorCode": STATUS * 1000, "trackingId": "fake", "message": "fake failure",
                           "timestampUtc": "2026-01-01T00:00:00Z"}).encode()
        self.send_response(STATUS)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        print("request %s %s host=%s" % (self.command, self.path, self.headers.get("Host")), flush=True)

    do_GET = do_PUT = do_POST = do_DELETE = do_PATCH = answer

    def log_message(self, fmt, *args):
        pass


PORT, CERT, KEY, STATUS = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
srv = http.server.ThreadingHTTPServer(("127.0.0.1", PORT), Handler)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(CERT, KEY)
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
print("listening", flush=True)
srv.serve_forever()
