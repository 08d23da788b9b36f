"""`python -m app.inference`: serve the inference API with uvicorn on INFERENCE_API_HOST/PORT,
in INFERENCE_WORKERS processes."""

from __future__ import annotations

import os
import tempfile

import uvicorn

from app.inference.app import app_from_environment
from app.settings import InferenceSettings

APP_FACTORY = "app.inference.app:app_from_environment"


def main() -> None:
    settings = InferenceSettings()
    common = {
        "host": settings.host,
        "port": settings.port,
        "access_log": settings.access_log,
        "log_config": None,
    }
    if settings.workers == 1:
        uvicorn.run(app_from_environment(), workers=1, **common)
        return
    # Several processes: uvicorn's supervisor starts each from the factory, which reads the
    # settings from the environment; an explicit reload reaches the others through this file.
    with tempfile.TemporaryDirectory(prefix="inference-api-") as shared:
        if settings.target_file is None:
            os.environ["INFERENCE_TARGET_FILE"] = os.path.join(shared, "target.json")
        uvicorn.run(APP_FACTORY, factory=True, workers=settings.workers, **common)


if __name__ == "__main__":
    main()
