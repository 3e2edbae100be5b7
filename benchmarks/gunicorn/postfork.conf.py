# The postfork variant: the user's whole integration is this import.
from postfork.integrations.gunicorn import post_fork, worker_exit  # noqa: F401
