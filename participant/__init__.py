"""participant package."""
