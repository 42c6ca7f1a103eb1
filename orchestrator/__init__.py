"""orchestrator: sweep specs, the Ray driver, the results store and the CLI (the only Ray user)."""
