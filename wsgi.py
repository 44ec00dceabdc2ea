"""The reference DriftWise host with the Slack integration mounted: ``gunicorn 'wsgi:app'``."""
from driftwise_slack.cli import build_or_exit
from driftwise_slack.reference_host import create_app

# A bad setting stops the web server, the worker and every command here, in one line.
app = build_or_exit(create_app)
