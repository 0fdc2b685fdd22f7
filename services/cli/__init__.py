"""Kushim cli service."""
