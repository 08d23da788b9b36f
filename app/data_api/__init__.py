"""The batch data provider: Covertype rows in timed batches, compatible with the course's API.

Run it with `python -m app.data_api` (settings: app.settings.DataApiSettings, from DATA_API_*
environment variables); build it in-process with `create_app(settings)`.
"""

from app.data_api.service import create_app

__all__ = ["create_app"]
