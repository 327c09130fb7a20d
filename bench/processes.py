"""Start a contender's worker processes: the one process start of the bench's own loops."""
from __future__ import annotations

import multiprocessing


def start_processes(count: int, target, *args) -> list[multiprocessing.Process]:
    """Start count daemon processes running target(*args); daemons end with their parent."""
    workers = [multiprocessing.Process(target=target, args=args, daemon=True)
               for _ in range(count)]
    for worker in workers:
        worker.start()
    return workers


def run_processes(count: int, target, *args) -> None:
    """Start count processes running target(*args) and wait for them (stopped by a signal)."""
    for worker in start_processes(count, target, *args):
        worker.join()
