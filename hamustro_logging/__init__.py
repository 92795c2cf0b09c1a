"""hamustro-logging."""
