"""driftwise_slack: the Slack integration of DriftWise, as a Flask extension.

Mount it with ``SlackIntegration(app, host=MyHostAdapter())``; see the README.
"""
from __future__ import annotations

from .errors import (
                     AccessDenied,
                     ConfigurationError,
                     InvalidState,
                     NotInstalled,
                     PaymentRequired,
                     SlackApiError,
                     SlackIntegrationError,
                     Unavailable,
                     VaultError,
)
from .extension import SlackIntegration
from .host import (
    AdminNotifier,
    AuditEvent,
    Caller,
    DeliveryProblem,
    EventType,
    HostAdapter,
    Plan,
    Role,
    ScanEvent,
    SessionLender,
)

__all__ = [
    "AccessDenied",
    "AdminNotifier",
    "AuditEvent",
    "Caller",
    "DeliveryProblem",
    "ConfigurationError",
    "EventType",
    "HostAdapter",
    "InvalidState",
    "NotInstalled",
    "PaymentRequired",
    "Plan",
    "Role",
    "ScanEvent",
    "SessionLender",
    "SlackApiError",
    "SlackIntegration",
    "SlackIntegrationError",
    "Unavailable",
    "VaultError",
]
