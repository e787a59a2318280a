"""Rate limits of the inference routes (``server.rate_limits``): token buckets (``buckets``) and the policy that
charges them per API key and per user and answers 429 (``limiter``)."""
