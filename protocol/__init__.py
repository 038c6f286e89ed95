"""I/O-free protocol core shared by the Prover and the Verifier.

Nothing in this package performs network I/O or imports ``grpc``, ``prover`` or ``verifier``.
"""

PROTOCOL_VERSION = "attribution.v2"
