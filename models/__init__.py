"""Helper models and inference engines behind one async interface (no FastAPI imports).

Empty until the helpers issue adds the rewriter, the aligner and the local/remote engines.
"""
