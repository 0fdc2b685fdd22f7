"""Kushim collector_cloudtrail service."""
