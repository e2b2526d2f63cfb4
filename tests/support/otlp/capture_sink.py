#!/usr/bin/env python3
"""capture_sink.py PORT OUTDIR: an OTLP/HTTP sink that stores every request body (NNNN.bin)
and its path + headers (NNNN.json). env FAIL_STATUS=503 answers that status with
Retry-After: 1. From docs/test-components.md section 7."""
import http.server, itertools, json, os, sys

out = sys.argv[2]
os.makedirs(out, exist_ok=True)
seq = itertools.count()


class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        i = next(seq)
        # headers first, body last: a test polling for NNNN.bin then finds both complete
        with open(f"{out}/{i:04d}.json.tmp", "w") as f:
            json.dump({"path": self.path, "headers": dict(self.headers)}, f)
        os.rename(f"{out}/{i:04d}.json.tmp", f"{out}/{i:04d}.json")
        with open(f"{out}/{i:04d}.bin.tmp", "wb") as f:
            f.write(body)
        os.rename(f"{out}/{i:04d}.bin.tmp", f"{out}/{i:04d}.bin")
        st = int(os.environ.get("FAIL_STATUS", "200"))
        self.send_response(st)
        if st != 200:
            self.send_header("Retry-After", "1")
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *a):
        pass


http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
