"""Run a generator in a thread, a few items ahead of its consumer."""
from __future__ import annotations

import queue
import threading

END = object()


def prefetch(gen, depth: int = 2, name: str = "tokenize_corpus-reader"):
    """Run the generator ``gen`` in a thread, ``depth`` items ahead of the consumer, so that
    reading, decompressing, JSON parsing and hashing overlap the encoding (tokenizers releases
    the GIL while it encodes). An exception in the thread is raised here, in the consumer;
    closing this generator stops the thread (and closes ``gen``)."""
    q: queue.Queue = queue.Queue(depth)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                pass
        return False

    def run():
        try:
            for item in gen:
                if not put(item):
                    return
            put(END)
        except BaseException as e:  # handed to the consumer
            put(e)
        finally:
            close = getattr(gen, "close", None)
            if close is not None:
                close()  # stops a prefetch inside gen too

    t = threading.Thread(target=run, name=name, daemon=True)
    t.start()
    try:
        while True:
            item = q.get()
            if item is END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        t.join()
