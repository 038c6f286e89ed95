"""Generated protobuf and gRPC code for the wire contract in ``proto/attribution/v1``."""
