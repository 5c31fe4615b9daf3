"""A separate process that ends this one when a start-up has not finished in time.

For a wait no thread of ours can time out: a multi-worker cluster whose other tasks never start
keeps ``MultiWorkerMirroredStrategy()`` in TensorFlow's C++ runtime forever, holding the GIL
(a timer thread never runs) and deaf to SIGTERM. Run as a script (standard library only, so it
starts in milliseconds): ``python watchdog.py PID SECONDS MESSAGE [NAME=HOST:PORT ...]``. The
watched process closes this one's stdin when it is ready; if that has not happened after SECONDS,
it prints ``ERROR MESSAGE: NAMES not listening; ...`` on stderr and kills the process.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import sys


def listening(address: str) -> bool:
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=2).close()
    except (OSError, ValueError):
        return False
    return True


def main(argv: list[str]) -> int:
    pid, seconds, message, tasks = int(argv[0]), float(argv[1]), argv[2], argv[3:]
    ready, _, _ = select.select([sys.stdin], [], [], seconds)
    if ready:  # closed (or written): started, or gone
        return 0
    silent = [
        f"{name} ({address})" for name, address in (task.split("=", 1) for task in tasks) if not listening(address)
    ]
    print(
        f"ERROR {message}: {', '.join(silent) or 'every task is listening, yet one is'} not listening; start every "
        "task of TF_CONFIG (a task that exits at start leaves the others waiting), or raise --cluster-timeout",
        file=sys.stderr,
        flush=True,
    )
    os.kill(pid, signal.SIGKILL)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
