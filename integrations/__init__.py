"""Server glue for gunicorn (WSGI and uvicorn's ASGI worker), uWSGI, Celery, RQ, Dramatiq and
Huey, installed as ``postfork.integrations``.

Each module knows one server and no client library: it only calls the postfork core.
The job runners (RQ, Dramatiq, Huey) fork with ``os.fork``, so postfork's at-fork hook does
the resets; their modules put the summary in the runner's log and make strict mode stop work.
"""
