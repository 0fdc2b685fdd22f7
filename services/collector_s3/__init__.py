"""Kushim collector_s3 service."""
