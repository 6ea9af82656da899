"""Domain rules that do no I/O: IDs, idempotency keys, strict JSON, tokens."""
