"""Server glue for gunicorn, uWSGI and Celery, installed as ``postfork.integrations``.

Each module knows one server and no client library: it only calls the postfork core.
"""
