"""Kushim evidence service."""
