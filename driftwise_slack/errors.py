"""The exception hierarchy of ``driftwise_slack``.

Every error has a stable ``code`` and a ``message`` a person can act on. None of them ever holds
a token, a client secret, an OAuth code or a webhook URL in its text, so ``str(exc)`` is safe to
log. The HTTP status of each lives in ``views/errors.py``: domain errors know nothing of HTTP.
"""
from __future__ import annotations


class SlackIntegrationError(Exception):
    """Base of every error raised by the package."""

    code = "slack_error"
    message = "Something went wrong with the Slack integration."

    def __init__(self, message: str | None = None) -> None:
        if message is not None:
            self.message = message
        super().__init__(self.message)


class ConfigurationError(SlackIntegrationError):
    """The deployment is misconfigured (e.g. no encryption key outside demo mode)."""

    code = "configuration_error"


class Unavailable(SlackIntegrationError):
    """This deployment has no Slack app configured."""

    code = "slack_unavailable"
    message = "Slack is not configured for this DriftWise deployment."


class Unauthenticated(SlackIntegrationError):
    """No valid caller."""

    code = "unauthorized"
    message = "Sign in to DriftWise first."


class AccessDenied(SlackIntegrationError):
    """The caller is not (or no longer) an owner or admin of the org."""

    code = "forbidden"
    message = "Only an owner or admin of this organization can manage the Slack integration."


class PaymentRequired(SlackIntegrationError):
    """The org's plan does not include Slack."""

    code = "payment_required"
    message = "Slack notifications need the Team or Enterprise plan."


class PlanCheckFailed(SlackIntegrationError):
    """The host could not tell the org's plan; we fail closed."""

    code = "plan_check_failed"
    message = "DriftWise could not confirm your plan right now. Please try again in a minute."


class InvalidState(SlackIntegrationError):
    """The OAuth state is forged, tampered, expired, already used or from another browser."""

    code = "invalid_state"
    message = (
        "This Slack connection link is invalid or has expired. "
        "Start again from DriftWise Settings."
    )


class BadRequest(SlackIntegrationError):
    """A request is malformed: a missing, duplicated or oversized parameter."""

    code = "bad_request"


class NotInstalled(SlackIntegrationError):
    """The org has no active Slack installation."""

    code = "not_installed"
    message = "Slack is not connected for this organization."


class InstallRefused(SlackIntegrationError):
    """Slack's answer to the exchange is not one we can accept (scopes, token type, app)."""

    code = "install_refused"


class StorageFailed(SlackIntegrationError):
    """Storing the installation failed after a successful exchange; the token was revoked."""

    code = "storage_failed"
    message = "DriftWise could not save the Slack connection. Nothing was stored; please try again."


class VaultError(SlackIntegrationError):
    """A stored token cannot be decrypted: wrong row, unknown key or damaged ciphertext."""

    code = "vault_error"
    message = "A stored Slack token could not be decrypted."


class SlackApiError(SlackIntegrationError):
    """Slack answered ``ok: false``, a non-2xx status, or not at all.

    ``error`` is Slack's error string (or ``http_<status>`` / ``timeout`` / ``connection_error``)
    and never holds a request parameter.
    """

    code = "slack_api_error"

    def __init__(
        self,
        *,
        method: str,
        error: str,
        status: int | None = None,
        retry_after: int | None = None,
    ) -> None:
        self.method = method
        self.error = error
        self.status = status
        self.retry_after = retry_after
        super().__init__(f"Slack {method} failed: {error}")


class RateLimited(SlackApiError):
    """HTTP 429 or ``ratelimited``: try again no earlier than ``retry_after`` seconds."""

    code = "slack_rate_limited"


class TransientSlackError(SlackApiError):
    """5xx, timeouts, connection errors and Slack's own transient errors: retry with backoff."""

    code = "slack_unreachable"


class ChannelError(SlackApiError):
    """The channel is missing, archived, or the bot is not in it: retrying will not help."""

    code = "slack_channel_error"


class DeadToken(SlackApiError):
    """The bot token is revoked or invalid: the installation must be reconnected."""

    code = "slack_token_invalid"


class ExchangeFailed(SlackIntegrationError):
    """Slack did not give us a token for the code: nothing was stored."""

    code = "slack_exchange_failed"
    message = ("Slack did not complete the connection (it may be down, or the link was used "
               "already). Nothing was stored; start again from DriftWise Settings.")


class Cancelled(SlackIntegrationError):
    """The user cancelled on Slack's consent page (or Slack sent another ``error``)."""

    code = "cancelled"
    message = "The Slack connection was cancelled. Nothing was changed."

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__()


class InvalidSignature(SlackIntegrationError):
    """An Events API request is not from Slack: signature or timestamp missing, stale or wrong."""

    code = "invalid_signature"
    message = "The request signature could not be verified."


class PayloadTooLarge(SlackIntegrationError):
    """A request body is larger than we read."""

    code = "too_large"
    message = "The request is too large."


class MessageGone(SlackApiError):
    """The message a reply or an edit points at is gone (``message_not_found``,
    ``thread_not_found``, ``cant_update_message``): post top-level instead, or give the edit up."""

    code = "slack_message_gone"
