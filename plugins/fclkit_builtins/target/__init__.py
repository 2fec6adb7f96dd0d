"""Built-in FCL method target (filled in by its implementation)."""
