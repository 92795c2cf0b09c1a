from typing import Any

UNKNOWN: Any
MODE_RAW: int
MODE_BINARY: int
MODE_TEXT: int
MODE_PICKLE: int
DEFAULT_SETTINGS: dict[str, Any]
DBNAME: str
