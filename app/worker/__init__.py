"""The delivery worker: claims due deliveries, sends them, writes back what happened."""
