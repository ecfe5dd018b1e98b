"""The promotions' lock across machines: a Prefect global concurrency limit of one slot, on the
server every worker already talks to, held with a lease while an alias moves.

MLflow's aliases have no compare-and-set, so every move of ``champion`` (a promotion, a
rollback) and of ``challenger`` re-reads the alias inside the lock. A registry in a local file
can only be reached from this machine, and keeps a file lock in the home; a tracking server can
be reached from any, so its lock is on the Prefect server, created by ``wikitune deploy``."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from wikitune.config import is_tracking_server

if TYPE_CHECKING:
    from wikitune.mlflow.registry import RegistryLock

__all__ = [
    "LEASE_SECONDS",
    "PROMOTIONS_LIMIT",
    "WAIT_SECONDS",
    "PromotionsLockMissing",
    "ensure_promotions_limit",
    "promotions_lock",
]

PROMOTIONS_LIMIT = "wikitune-promotions"
LEASE_SECONDS = 60
"""A holder that dies gives the slot back this long after its last renewal."""
WAIT_SECONDS = 600
"""How long a promotion waits for the slot before it fails (an alias move takes seconds)."""


class PromotionsLockMissing(RuntimeError):
    """The registry is shared, but its lock cannot be taken: no Prefect API, or no limit."""


def ensure_promotions_limit() -> int:
    """Create (or reset to one slot) the ``wikitune-promotions`` global concurrency limit on the
    server in PREFECT_API_URL. Returns its slot count (1)."""
    from prefect import get_client
    from prefect.client.schemas.actions import (
        GlobalConcurrencyLimitCreate,
        GlobalConcurrencyLimitUpdate,
    )
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(PROMOTIONS_LIMIT)
        except ObjectNotFound:
            client.create_global_concurrency_limit(
                GlobalConcurrencyLimitCreate(name=PROMOTIONS_LIMIT, limit=1)
            )
        client.update_global_concurrency_limit(
            PROMOTIONS_LIMIT, GlobalConcurrencyLimitUpdate(limit=1, active=True)
        )
        return client.read_global_concurrency_limit_by_name(PROMOTIONS_LIMIT).limit


def promotions_lock(tracking_uri: str, home_lock: Path) -> RegistryLock:
    """The lock every alias move of ``tracking_uri``'s registry runs under: ``home_lock`` (a
    file) for a local registry, the Prefect server's ``wikitune-promotions`` limit for a
    tracking server. Strict: a shared registry without a reachable limit fails the move."""
    if not is_tracking_server(tracking_uri):
        from wikitune.mlflow.registry import file_lock

        return file_lock(home_lock)
    from prefect.settings import PREFECT_API_URL

    api = PREFECT_API_URL.value()
    if not api:
        raise PromotionsLockMissing(
            f"moving an alias in the shared registry at {tracking_uri} needs the Prefect server"
            " that holds the promotions' lock: set PREFECT_API_URL (`wikitune up` prints it)"
        )

    @contextmanager
    def held() -> Iterator[None]:
        from prefect.concurrency._asyncio import ConcurrencySlotAcquisitionError
        from prefect.concurrency.sync import concurrency

        with ExitStack() as stack:
            try:
                stack.enter_context(
                    concurrency(
                        PROMOTIONS_LIMIT,
                        occupy=1,
                        timeout_seconds=WAIT_SECONDS,
                        lease_duration=LEASE_SECONDS,
                        strict=True,
                    )
                )
            except ConcurrencySlotAcquisitionError as error:
                raise PromotionsLockMissing(
                    f"the Prefect server at {api} has no global concurrency limit"
                    f" {PROMOTIONS_LIMIT!r} to hold while moving an alias in {tracking_uri}:"
                    " run `wikitune deploy` (or `wikitune up`) against it first"
                ) from error
            yield

    return held
