"""An app with a registered client whose reset fails in the worker."""

import postfork


class Legacy:
    pass


def _reset(obj):
    raise RuntimeError("cannot reconnect")


legacy = postfork.register(Legacy(), reset=_reset, name="legacy-client")
