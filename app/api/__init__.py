"""The HTTP layer: routers that parse, call one service, and shape the answer."""
