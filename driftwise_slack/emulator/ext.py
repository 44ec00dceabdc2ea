"""Where an emulator app keeps its world, and how views find it."""
from __future__ import annotations

import typing as t

from flask import current_app

from .store import World

if t.TYPE_CHECKING:
    from flask import Flask

#: The ``app.extensions`` key holding the app's :class:`~.state.World`.
EXTENSION_KEY = "driftwise_slack_emulator"


def get_world(app: Flask | None = None) -> World:
    """The world of ``app`` (default: the current app). Raises ``RuntimeError`` if it has none."""
    target = app if app is not None else current_app
    try:
        return t.cast(World, target.extensions[EXTENSION_KEY])
    except KeyError:
        raise RuntimeError("this app was not built by the emulator's create_app()") from None
