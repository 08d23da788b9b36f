"""`python -m ui`: the NiceGUI front end on UI_HOST:UI_PORT (default 127.0.0.1:8503).

Also the main file NiceGUI's test fixtures execute (tests/test_ui/conftest.py), so keep the
imports absolute.
"""

from __future__ import annotations

import logging

from app.settings import UiSettings
from ui.app import run


def main() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    run(UiSettings())


if __name__ in {"__main__", "__mp_main__"}:
    main()
