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
from .host import AuditEvent, Caller, EventType, HostAdapter, Plan, Role, ScanEvent

__all__ = [
    "AccessDenied",
    "AuditEvent",
    "Caller",
    "ConfigurationError",
    "EventType",
    "HostAdapter",
    "InvalidState",
    "NotInstalled",
    "PaymentRequired",
    "Plan",
    "Role",
    "ScanEvent",
    "SlackApiError",
    "SlackIntegration",
    "SlackIntegrationError",
    "Unavailable",
    "VaultError",
]
