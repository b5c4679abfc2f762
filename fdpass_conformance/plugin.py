"""pytest entry point of the toolkit (options, fixtures and hooks are added here)."""
