"""The one ``SlackIntegration`` object the reference host mounts (Flask-extension style).

Imported only when ``create_app(mount_slack=True)``, so the host also builds without it.
"""
from __future__ import annotations

from driftwise_slack.extension import SlackIntegration

#: Shared by every app this process builds; its per-app state lives in ``app.extensions``.
slack = SlackIntegration()
