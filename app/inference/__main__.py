"""`python -m app.inference`: serve the inference API with uvicorn on INFERENCE_API_HOST/PORT."""

from __future__ import annotations

import logging

import uvicorn

from app.inference.app import create_app
from app.inference.registry import configure_mlflow_client
from app.settings import InferenceSettings


def main() -> None:
    settings = InferenceSettings()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    configure_mlflow_client(settings)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        access_log=settings.access_log,
        # One process: the model lives in memory once, and onnxruntime releases the GIL.
        workers=1,
        log_config=None,
    )


if __name__ == "__main__":
    main()
