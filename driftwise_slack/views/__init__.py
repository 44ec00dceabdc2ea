"""HTTP layer: blueprints that parse requests, call the use-cases and render JSON or HTML."""
