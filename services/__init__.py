"""The deployable services; each reads as a small program and none imports another."""
