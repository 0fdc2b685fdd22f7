"""Kushim's shared contracts and infrastructure: messages, subjects, settings, logging, AWS and NATS plumbing.

Nothing in this package imports a service, and nothing here does work at import time.
"""
