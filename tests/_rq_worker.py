"""The worker class tests/test_rq.py runs: postfork's (``postfork.integrations.rq.Worker``),
subclassed as its docstring says an application would, only to make RQ's own shutdown prompt.

rq 3.0.0's ``unsubscribe()`` sends UNSUBSCRIBE and then stops its pub/sub thread; since
redis-py 8.2.0 ``PubSubWorkerThread.stop()`` waits for that thread, which, once the reply has
ended its subscription and before the stop flag is cleared, may already be back in
``get_message()`` waiting for a new subscription: up to RQ's ``sleep_time``, 60 s. Measured
without postfork (plain ``rq worker-pool -n 2 --burst`` on an empty queue, the machine busy): 2
of 6 runs took 60 s, the others under 1 s. Clearing the flag first lets the reply end the loop.
"""

from __future__ import annotations

from postfork.integrations.rq import Worker as _PostforkWorker


class Worker(_PostforkWorker):
    def unsubscribe(self) -> None:
        thread = self.pubsub_thread
        if thread is not None:
            try:
                thread.stop(timeout=0)  # clears the flag; waits for nothing
            except TypeError:  # redis-py < 8.2: stop() takes no timeout and waits for nothing
                thread.stop()
        super().unsubscribe()
