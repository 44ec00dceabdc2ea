"""Repositories over a ``Session`` passed in. Keyword-only lookups; no Flask; no commits.

The use-cases in ``install.py``, ``dispatch.py`` and ``jobs.py`` own the transactions. The one
exception is cleanup: :meth:`DeliveryRepository.prune` commits after every batch so that no
transaction holds more than one batch of deletions (see :meth:`DeliveryRepository.prune_batches`
for the form that leaves each commit to the caller).
"""
from ._base import AUTOCOMMIT_BIND, _dialect_insert
from .accounts import EventRepository, InstallationRepository, StateRepository
from .deliveries import PRUNE_BATCH, PRUNE_DUTY, DeliveryRepository
from .notices import NOTICE_INTERVAL, AdminNoticeRepository

__all__ = ["AUTOCOMMIT_BIND", "NOTICE_INTERVAL", "PRUNE_BATCH", "PRUNE_DUTY",
           "AdminNoticeRepository", "DeliveryRepository", "EventRepository",
           "InstallationRepository", "StateRepository", "_dialect_insert"]
