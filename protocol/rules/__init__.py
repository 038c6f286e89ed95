"""Decision rules: the practical rule (the default) and the paper's rule, and what they share."""
