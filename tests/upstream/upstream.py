#!/usr/bin/env python3
"""Test upstream for keygate's reverse-proxy tests (Python standard library only).

Listens on 127.0.0.1 on a free port, prints the port as the first line of
standard output, and serves until killed. Routes, by path without query:

  /__count          request count so far (this route excluded), not via keygate
  /chunked          chunked response with a chunk extension and a trailer
  /close-delimited  response without Content-Length, ended by closing
  /slow?seconds=N   waits N seconds before responding
  /crash-length     promises 100000 bytes, sends 1000, closes
  /crash-chunked    sends one chunk, closes without the last chunk
  /drop-next        responds, then closes this connection at its next request
  /upload?blocks=N  checks the body against the test pattern (see pattern_block)
  /status?code=N    responds with status N and no body
  anything else     echoes method, target, headers and the body's SHA-256
"""

import hashlib
import http.server
import json
import socketserver
import sys
import threading
import time
import urllib.parse

BLOCK_BYTES = 1 << 20
BASE_BLOCK = bytes((i * 31 + (i >> 8)) & 0xFF for i in range(BLOCK_BYTES))
READ_BYTES = 64 * 1024

request_count = 0
count_lock = threading.Lock()


def pattern_block(index):
    """Block `index` of the upload pattern: its index as 8 big-endian bytes,
    then the rest of BASE_BLOCK. Distinct blocks catch reordering."""
    return index.to_bytes(8, "big") + BASE_BLOCK[8:]


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    drop_next = False

    def log_message(self, format, *args):
        pass

    def handle_one_request(self):
        if self.drop_next:
            # Read the request line, then close without responding, like an
            # upstream that closes an idle keep-alive connection just as a
            # request arrives.
            self.rfile.readline()
            self.close_connection = True
            return
        super().handle_one_request()

    def do_any(self):
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query)
        if url.path != "/__count":
            global request_count
            with count_lock:
                request_count += 1
        route = {
            "/__count": self.count,
            "/chunked": self.chunked,
            "/close-delimited": self.close_delimited,
            "/slow": self.slow,
            "/crash-length": self.crash_length,
            "/crash-chunked": self.crash_chunked,
            "/drop-next": self.arm_drop_next,
            "/upload": self.upload,
            "/status": self.status,
        }.get(url.path, self.echo)
        route(query)

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_any

    def body_chunks(self):
        """Yields the request body in pieces, decoding chunked framing."""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b""):
                        pass
                    return
                left = size
                while left:
                    piece = self.rfile.read(min(left, READ_BYTES))
                    if not piece:
                        raise ConnectionError("body ended inside a chunk")
                    left -= len(piece)
                    yield piece
                self.rfile.readline()
        else:
            left = int(self.headers.get("Content-Length", "0"))
            while left:
                piece = self.rfile.read(min(left, READ_BYTES))
                if not piece:
                    raise ConnectionError("body ended early")
                left -= len(piece)
                yield piece

    def reply(self, status, body, content_type="application/json", headers=()):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def reply_json(self, value):
        self.reply(200, json.dumps(value).encode())

    def count(self, query):
        with count_lock:
            self.reply_json({"requests": request_count})

    def echo(self, query):
        digest = hashlib.sha256()
        length = 0
        for piece in self.body_chunks():
            digest.update(piece)
            length += len(piece)
        self.reply_json(
            {
                "method": self.command,
                "target": self.path,
                "version": self.request_version,
                "headers": [[name, value] for name, value in self.headers.items()],
                "body_length": length,
                "body_sha256": digest.hexdigest(),
                "connection_port": self.client_address[1],
            }
        )

    def chunked(self, query):
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Trailer", "X-Checksum")
        self.end_headers()
        self.wfile.write(b"6;note=first\r\nhello \r\n8\r\nchunked \r\n5\r\nworld\r\n")
        self.wfile.write(b"0\r\nX-Checksum: 1\r\n\r\n")

    def close_delimited(self, query):
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(b"until the connection closes")
        self.close_connection = True

    def slow(self, query):
        time.sleep(float(query.get("seconds", ["5"])[0]))
        self.reply(200, b"late\n", "text/plain")

    def crash_length(self, query):
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", "100000")
        self.end_headers()
        self.wfile.write(b"x" * 1000)
        self.close_connection = True

    def crash_chunked(self, query):
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.wfile.write(b"5\r\nfirst\r\n")
        self.close_connection = True

    def arm_drop_next(self, query):
        self.reply(200, b"armed\n", "text/plain")
        self.drop_next = True

    def upload(self, query):
        blocks = int(query["blocks"][0])
        received = hashlib.sha256()
        expected = hashlib.sha256()
        for index in range(blocks):
            expected.update(pattern_block(index))
        length = 0
        for piece in self.body_chunks():
            received.update(piece)
            length += len(piece)
        self.reply_json(
            {
                "length": length,
                "sha256": received.hexdigest(),
                "expected_sha256": expected.hexdigest(),
            }
        )

    def status(self, query):
        code = int(query["code"][0])
        for piece in self.body_chunks():
            pass
        self.send_response(code)
        self.send_header("ETag", '"fixed"')
        if code not in (204, 304):
            self.send_header("Content-Length", "0")
        self.end_headers()


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True


def main():
    server = Server(("127.0.0.1", 0), Handler)
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
