"""Kushim services. Each package is independent; only `services.cli` composes them."""
