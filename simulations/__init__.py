"""Adversarial provers and the machinery to watch the verifier catch them."""
