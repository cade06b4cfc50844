#!/usr/bin/env python3
"""Decodes OTLP/HTTP metrics export requests with OpenTelemetry's own
Python classes (opentelemetry-proto, an implementation independent of the
agent's), for the output tests: each file named on the command line holds
one request body as the agent POSTed it (gzip or not); prints one JSON
array, a request per file, in protobuf's canonical JSON mapping (field
names as in the .proto files; 64-bit integers as strings)."""
import gzip
import json
import sys

from google.protobuf.json_format import MessageToDict
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)

out = []
for path in sys.argv[1:]:
    with open(path, "rb") as f:
        body = f.read()
    if body[:2] == b"\x1f\x8b":
        body = gzip.decompress(body)
    req = ExportMetricsServiceRequest()
    req.ParseFromString(body)
    out.append(MessageToDict(req, preserving_proto_field_name=True))
json.dump(out, sys.stdout)
