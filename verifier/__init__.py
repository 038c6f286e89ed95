"""The lightweight Verifier: challenges a prover, spot-checks it, and accepts or rejects."""
