"""Whether the driver's daisy scheduler still listens, preferably without connecting to it.

Worker-slot processes ask this every second or two, to end workers the run
ended under (see :class:`~blockwise.execution.local.LocalWorker`). They must
not ask by connecting: daisy 2.0's server remembers the address of every
client that disconnected and declares lost any block it has handed to a client
at such an address. A probe that connects and closes leaves its ephemeral port
in that list; after a few thousand connections to one scheduler the kernel
hands the same port to a new worker, and daisy then takes that worker's blocks
away at every health check (``WARN block lost ... timed_out=false``) although
the worker finishes them; a one-block stage can use up its retries that way.
With the ephemeral port range narrowed to 40 ports, one FIB-25 demo run lost
21 blocks and failed with connecting probes; runs without them lost 4 and 8
(worker connections alone reuse ports at that range, which only daisy can fix).

Slot processes run on the scheduler's host, so they look for its listening
socket in ``/proc/net/tcp`` and ``/proc/net/tcp6`` (Linux). Only a process
elsewhere (a SLURM task on a compute node, once, after its worker failed) or
on a system without ``/proc`` connects.
"""

from __future__ import annotations

import logging
import socket

logger = logging.getLogger(__name__)

#: the TCP state ``LISTEN`` in ``/proc/net/tcp`` (include/net/tcp_states.h)
_LISTEN = b"0A"
_TABLES = ("/proc/net/tcp", "/proc/net/tcp6")
#: whether this process already said that it probes by connecting
_warned = False


def listening_here(port: int) -> bool | None:
    """Whether a socket of this host (network namespace) listens on TCP ``port``.

    Makes no connection. None when neither ``/proc/net/tcp`` table can be
    read (not Linux): the caller must find out another way.
    """
    suffix = b":%04X" % port
    readable = False
    for table in _TABLES:
        try:
            # line by line: the kernel lists listening sockets first and writes the
            # table as it is read, so a listening scheduler is found without the
            # connections of a busy host being formatted
            with open(table, "rb") as f:
                readable = True
                next(f, None)  # the header
                for line in f:
                    fields = line.split(maxsplit=4)
                    if len(fields) > 3 and fields[3] == _LISTEN and fields[1].endswith(suffix):
                        return True
        except OSError:
            continue
    return False if readable else None


def connection_refused(host: str, port: int, timeout_s: float) -> bool | None:
    """Connect to ``host:port`` once: True if refused, False if accepted, None otherwise.

    None: unreachable or no answer within ``timeout_s`` (not proof either way).
    Each call is one more closed client address in daisy's server (see the
    module docstring): for a single check at the end of a worker, not for polling.
    """
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return False
    except ConnectionRefusedError:
        return True
    except OSError:
        return None


def scheduler_listening(host: str, port: int, timeout_s: float) -> bool:
    """Whether the scheduler at ``host:port`` still listens, asked from its own host.

    Without ``/proc`` this connects once (a slow or unreachable answer counts
    as listening: slow is not gone).
    """
    global _warned
    here = listening_here(port)
    if here is not None:
        return here
    if not _warned:
        _warned = True
        logger.warning(
            "cannot read %s: asking the scheduler at %s:%d by connecting, which daisy 2.0 "
            "may later count against a worker that gets this connection's port "
            "('block lost ... timed_out=false'; the block is retried)",
            " or ".join(_TABLES),
            host,
            port,
        )
    return connection_refused(host, port, timeout_s) is not True
