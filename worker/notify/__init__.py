"""Notification delivery: the message contract, the sinks and the outbox relay."""
