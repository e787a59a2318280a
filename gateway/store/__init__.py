"""The trace store: requests and feedback in SQLite or Postgres, written off the request path."""
