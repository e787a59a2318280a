"""``POST /v1/feedback``: ratings (and comments, corrections) of earlier answers, for the A/B loop."""
