"""``POST /v1/feedback`` and ``POST /v1/preferences``: what people say about earlier answers — ratings (and
comments, corrections) of one answer, and pairwise preferences between two — for the A/B loop and training data."""
