"""Generated protobuf/gRPC code of the public API (scripts/gen_api.py). Do not edit."""
