"""The package's version: the one place it is written.

``pyproject.toml`` reads it at build time (``[tool.hatch.version]``); the
package exports it as ``hamustro_logging.__version__``; the CLI's
``--version`` and the HTTP ``User-Agent`` use it. ``CHANGELOG.md`` names the
same release (a test checks all of them agree).
"""

__version__ = "0.2.0"
