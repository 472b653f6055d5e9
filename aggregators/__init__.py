"""Built-in aggregator plugins (registered through the project's own entry points)."""
