"""The trace store: requests, feedback and preferences in SQLite or Postgres, written off the request path."""
