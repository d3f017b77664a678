"""Reading a JSON file a user wrote (an intents file, a cases file), with errors that say where it went wrong."""

from __future__ import annotations

import json
from pathlib import Path


def read_json(path: Path, what: str, error: type[ValueError], missing: str = "") -> object:
    """The parsed contents of `path`, or `error` naming the file (`what` it is), the line and the column at fault.

    `missing` is added to the message when the file does not exist: the setting or flag to fix."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise error(f"{what} {path} does not exist{missing}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"{what} {path} cannot be read: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise error(f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
