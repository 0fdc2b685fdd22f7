"""Kushim scheduler service."""
