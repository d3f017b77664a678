"""Where voicebot keeps what it writes when no setting says otherwise: never relative to the current folder.

Run from a source checkout (a `pyproject.toml` beside the packages), defaults stay inside the checkout: the
database and reports in `var/`, models in `models/cache/`, all git-ignored. Installed as a package (a container
image, a plain `pip install`), they go to `$VOICEBOT_DATA_DIR`, else `$XDG_DATA_HOME/voicebot`, else
`~/.local/share/voicebot`, with models in its `models/`. `VOICEBOT_DATA_DIR` also moves a checkout's `var/`.
"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGES_ROOT = Path(__file__).resolve().parent.parent  # the checkout, or site-packages when installed


def source_checkout() -> Path | None:
    """The source checkout voicebot runs from, or None when it runs installed."""
    return PACKAGES_ROOT if (PACKAGES_ROOT / "pyproject.toml").is_file() else None


def data_dir() -> Path:
    """The folder for the default database, benchmark reports and (installed) models; not created here."""
    env = os.environ.get("VOICEBOT_DATA_DIR")
    if env:
        return Path(env).expanduser().resolve()
    checkout = source_checkout()
    if checkout is not None:
        return checkout / "var"
    xdg = os.environ.get("XDG_DATA_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".local" / "share") / "voicebot"


def default_store_url() -> str:
    """The SQLite file in the data folder."""
    return f"sqlite:///{data_dir() / 'voicebot.db'}"
