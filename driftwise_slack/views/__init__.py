"""HTTP layer: entry points that parse requests, call the use-cases and render JSON or HTML.

``setup.register`` makes the blueprints and wires them into an app; each route module adds its
routes to them through its ``attach`` function.
"""
