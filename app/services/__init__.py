"""Use cases: what the API and the CLI ask for, composed from domain rules and the store."""
