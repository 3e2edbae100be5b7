# gunicorn config for the example app:  gunicorn -c examples/gunicorn.conf.py
# The app is imported once in the master (preload_app) and its clients are inherited by every
# worker; postfork's post_fork gives each worker fresh ones, worker_exit closes them.
import os

from postfork.integrations.gunicorn import post_fork, worker_exit  # noqa: F401

wsgi_app = "app:application"
pythonpath = os.path.dirname(os.path.abspath(__file__))
preload_app = True
workers = 4
bind = "127.0.0.1:8000"
loglevel = "info"
