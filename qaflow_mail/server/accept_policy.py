"""Whether a message's reply is the pipeline's verdict or a 250 once it is queued ([smtp] accept).

"inline" always runs the pipeline before the reply, so a refusal is the SMTP reply itself; "queue" always writes
the message to the inbound queue, fsyncs it and answers 250, and a refusal is told by mail; "auto" gives the
verdict while the pipeline is free and queues when anything else is waiting for it (a burst, a backlog), so the
usual message still gets its refusal as a reply while a burst is taken at the pace of the disk. A large message
(pipeline.cpu.LARGE_MESSAGE_BYTES and more) is queued too: reading it takes seconds its sender need not wait, and
the queue worker reads such messages one at a time, where a second reader in the listener's process would double
the memory a burst of them needs.
"""

from __future__ import annotations

from collections.abc import Callable

from qaflow_mail.pipeline.cpu import LARGE_MESSAGE_BYTES


class InlineLoad:
    """Messages this process is running through the pipeline before their reply, shared by its listeners."""

    def __init__(self) -> None:
        self.running = 0


def answers_inline(accept: str, *, inline_running: int, queue_waiting: Callable[[], bool], size: int) -> bool:
    """True: run the pipeline and reply with its verdict; False: queue the message and reply 250. `queue_waiting`
    (a look at the queue's directory) is asked only when the answer depends on it."""
    if accept == "inline":
        return True
    if accept == "queue":
        return False
    # A message that would wait behind another one is queued: its 250 never waits for the pipeline, and the
    # queue keeps messages in the order they came.
    return inline_running == 0 and size < LARGE_MESSAGE_BYTES and not queue_waiting()
