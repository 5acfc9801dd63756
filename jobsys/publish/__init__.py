"""Publishing jobs: prepare (pure), pre-encoded properties, the Producer and its sync facade."""
