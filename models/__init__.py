"""Helper models and inference engines behind one async interface: the BPO-style rewriter and the Aligner-style
corrector with their published templates, the in-process engine (``models.local``) and the engine over any
OpenAI-compatible server (``models.remote``). Imports ``core`` only, never ``gateway`` or ``train``.
"""
