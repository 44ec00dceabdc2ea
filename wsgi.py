"""The reference DriftWise host with the Slack integration mounted: ``gunicorn 'wsgi:app'``."""
from driftwise_slack.reference_host import create_app

app = create_app()
