"""Kushim collector_iam service."""
