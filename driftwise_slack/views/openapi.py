"""``GET /slack/openapi.json``: the package's OpenAPI document, as shipped in the wheel."""
from __future__ import annotations

import importlib.resources
import json

from flask import Blueprint, Response


def openapi() -> Response:
    """The OpenAPI document, re-serialised (compact) from ``driftwise_slack/openapi.json``."""
    document = importlib.resources.files("driftwise_slack").joinpath("openapi.json")
    text = document.read_text(encoding="utf-8")
    return Response(json.dumps(json.loads(text)), mimetype="application/json")


def attach(bp: Blueprint) -> None:
    """Add ``GET /slack/openapi.json`` (endpoint ``openapi``) to ``bp``."""
    bp.add_url_rule("/slack/openapi.json", view_func=openapi, methods=["GET"])
