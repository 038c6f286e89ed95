"""The Prover: retrains, estimates a datamodel, answers challenges."""
