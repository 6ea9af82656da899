"""eventrelay: durable HTTP event ingestion and signed, ordered webhook delivery."""

__version__ = "0.1.0"
