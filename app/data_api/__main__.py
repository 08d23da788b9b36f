"""`python -m app.data_api`: load the dataset, then serve it with uvicorn on one worker.

One worker on purpose: the groups' progress lives in this process (and its state file), so
two workers would each keep their own batch per group.
"""

from __future__ import annotations

import logging
import resource
import sys
import time

import uvicorn

from app.data_api.dataset import DatasetError, load_dataset
from app.data_api.service import create_app
from app.settings import DataApiSettings, SettingsError

log = logging.getLogger("app.data_api")


def _rss_mib() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize() / 2**20
    except OSError:
        # Not Linux: peak RSS is what getrusage offers.
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        settings = DataApiSettings()
    except SettingsError as exc:
        log.error("bad setting: %s", exc)
        return 2
    started = time.perf_counter()
    try:
        dataset = load_dataset(settings.dataset_path, settings.n_batches)
    except DatasetError as exc:
        log.error("%s", exc)
        return 1
    log.info(
        "loaded %d rows from %s in %.2f s into %d batches of %s rows; RSS %.0f MiB",
        dataset.n_rows,
        settings.dataset_path,
        time.perf_counter() - started,
        settings.n_batches,
        "/".join(str(n) for n in sorted(set(dataset.batch_sizes), reverse=True)),
        _rss_mib(),
    )
    app = create_app(settings, dataset=dataset)
    log.info(
        "serving %d groups on http://%s:%d (interval %g s, state %s, seed %s)",
        settings.n_groups,
        settings.host,
        settings.port,
        settings.interval_seconds,
        settings.state_file,
        "none (OS randomness)" if settings.seed is None else settings.seed,
    )
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        access_log=settings.access_log,
        log_config=None,  # keep the root logging set up above
        timeout_graceful_shutdown=5,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
