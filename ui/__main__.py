"""`python -m ui`: the NiceGUI front end on UI_HOST:UI_PORT (default 127.0.0.1:8503).

Also the main file NiceGUI's test fixtures execute (tests/test_ui/conftest.py), so keep the
imports absolute.
"""

from __future__ import annotations

import logging
import sys

from app.settings import SettingsError, UiSettings
from ui.app import run
from ui.auth import check_settings

log = logging.getLogger("ui")


def main() -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        settings = UiSettings()
        check_settings(settings)
    except SettingsError as exc:
        # The variable's name and what is wrong with it, never its value.
        log.error("refusing to start: %s", exc)
        return 2
    run(settings)
    return 0


# Under NiceGUI's user simulation run() returns at once: exit only on a refusal.
if __name__ in {"__main__", "__mp_main__"} and (status := main()):
    sys.exit(status)
