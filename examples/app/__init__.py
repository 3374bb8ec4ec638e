"""docs-service: a small FastAPI app with the event-loop bugs loopguard is built to catch.

The app is built by :func:`app.main.create_app`. (Importing nothing here keeps the worker
processes of ``app.fixed.cpu_pool`` light: they only need ``app.pipeline``.)
"""
