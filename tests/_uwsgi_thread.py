"""Imported by uWSGI in the master: a thread of the master alive when the workers are forked.

It sleeps: a sleeping thread does not hold the GIL, so the workers boot even without
--py-call-uwsgi-fork-hooks (the hang that flag prevents needs a thread holding the GIL).
"""

import threading
import time

threading.Thread(target=time.sleep, args=(600,), name="master-ticker", daemon=True).start()
