#!/usr/bin/env python3
"""Independent OTLP metrics decoder: ExportMetricsServiceRequest protobuf -> JSON on stdout.
usage: decode_otlp.py [FILE|-] [--grpc]   (gzip auto-detected; --grpc strips the 5-byte gRPC frame)
needs: opentelemetry-proto, protobuf (the test venv). From docs/test-components.md section 7."""
import gzip, json, sys
from google.protobuf.json_format import MessageToDict
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest


def decode(body: bytes, grpc_framed: bool = False) -> dict:
    if grpc_framed:  # 1 byte compressed-flag + 4 byte big-endian length
        flag, n = body[0], int.from_bytes(body[1:5], "big")
        body = body[5:5 + n]
        if flag:
            body = gzip.decompress(body)
    if body[:2] == b"\x1f\x8b":  # Content-Encoding: gzip
        body = gzip.decompress(body)
    req = ExportMetricsServiceRequest()
    req.ParseFromString(body)  # raises google.protobuf.message.DecodeError on garbage
    return MessageToDict(req)  # OTLP/JSON-style camelCase keys, 64-bit ints as strings


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--grpc"]
    data = sys.stdin.buffer.read() if not args or args[0] == "-" else open(args[0], "rb").read()
    print(json.dumps(decode(data, "--grpc" in sys.argv), indent=1))
