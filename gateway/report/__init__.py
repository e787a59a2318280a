"""Reading the trace store back: ``aligngate ab report`` (:mod:`~gateway.report.ab`) and ``aligngate data
export`` (:mod:`~gateway.report.export`), both on the read-only access of :mod:`~gateway.report.source`.

Nothing here writes to the store or runs its schema upgrades: a report of a live gateway's database only
reads it.
"""

#: ``aligngate data export --kind`` (here, so that the CLI knows them without importing the store).
EXPORT_KINDS: tuple[str, ...] = ("preferences", "aligner", "rewriter")

#: Ratings per arm the A/B report's always-valid interval is tuned for unless told (``--planned-ratings``).
DEFAULT_PLANNED_N = 1000
