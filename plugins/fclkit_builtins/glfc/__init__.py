"""Built-in FCL method glfc (filled in by its implementation)."""
