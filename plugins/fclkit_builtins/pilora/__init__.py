"""Built-in FCL method pilora (filled in by its implementation)."""
