"""``python -m wikitune.worker start --pool gpu ...``: Prefect's worker, quiet about what is not
news. ``wikitune up`` starts its workers this way.

A deployment with a concurrency limit keeps its queued runs SCHEDULED; every poll of a worker
then logs "Aborted submission of flow run …: Server returned a non-pending state 'SCHEDULED'"
into the waiting run's logs (dozens a cycle). Libraries' FutureWarnings about their own next
releases reach the flow runs' logs the same way. Neither says anything to the person reading
them; everything else Prefect logs is kept.
"""

from __future__ import annotations

import logging
import sys
import warnings

__all__ = ["NotNews", "main"]


class NotNews(logging.Filter):
    """Drops a worker's log lines about a queued run it may not start yet."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (
            message.startswith("Aborted submission of flow run")
            and "non-pending state 'SCHEDULED'" in message
        )


def main() -> None:
    """Run ``prefect worker`` with the arguments given, filtered as above."""
    warnings.simplefilter("ignore", FutureWarning)
    from prefect.cli import app

    logging.getLogger("prefect.flow_runs.worker").addFilter(NotNews())
    sys.argv = ["prefect", "worker", *sys.argv[1:]]
    sys.exit(app())


if __name__ == "__main__":
    main()
