#!/usr/bin/python3
"""A persona outbox worker (docs/delivery.md, "The worker protocol").

LISTENs on persona_outbox, claims due messages of one channel, hands each
to a sender, acks what was sent in one batch and fails what was not with
the sender's error. Reconnects when the server goes away; on SIGTERM or
SIGINT it finishes the batch in hand, acks it and exits 0.

Runs on Debian's python3-psycopg (psycopg 3):

    /usr/bin/python3 examples/worker.py --channel push "dbname=shop"

The sender is pluggable: --sender module:function names a callable
send(message: dict) that raises to report a failure (an exception with a
`retry = False` attribute makes the message dead at once). The default
prints each message as one JSON line on stdout.
"""

import argparse
import importlib
import json
import select
import signal
import sys
import time

import psycopg

stopping = False


def stop(signum, frame):
    global stopping
    stopping = True


def stdout_sender(message):
    print(json.dumps(message, default=str, sort_keys=True), flush=True)


def load_sender(spec):
    if not spec:
        return stdout_sender
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name or "send")


def log(text):
    print(f"worker: {text}", file=sys.stderr, flush=True)


def id_array(ids):
    """A bigint[] literal: built by str.join, not by psycopg's list dumper
    (pure Python, a call per element)."""
    return "{" + ",".join(map(str, ids)) + "}"


def ack(conn, ids):
    """Acks ids; an id another worker acked first (55000, a late ack) is dropped."""
    try:
        with conn.transaction():
            conn.execute("SELECT persona_ack(%s::bigint[])", (id_array(ids),))
    except psycopg.errors.ObjectNotInPrerequisiteState:
        # Another worker acked some of them after our lease expired (the
        # batch was all or none): ack one by one, skipping those.
        for i in ids:
            try:
                with conn.transaction():
                    conn.execute("SELECT persona_ack(%s::bigint[])", (id_array([i]),))
            except psycopg.errors.ObjectNotInPrerequisiteState as e:
                log(f"message {i} not acked: {e.diag.message_primary}")


# The batch comes back as one row of json values, a column of values per
# field (json_agg of each column, which PostgreSQL formats in about half the
# time of json_agg of whole rows), each decoded by one json.loads, in C.
# psycopg's own per-row, per-column decoding is pure Python on Debian (no C
# speedups) and would cost more CPU than the server spends claiming and
# rendering.
FIELDS = ("message_id", "profile_id", "user_id", "channel", "action", "content", "attempt", "source")
CLAIM = ("SELECT " + ", ".join(f"json_agg(m.{f})" for f in FIELDS) +
         " FROM persona_claim(%s, %s, %s::interval) AS m")


def messages(columns):
    """The message dicts of a claimed batch, from its columns."""
    if columns[0] is None:      # no row: json_agg gives null
        return []
    return [dict(zip(FIELDS, values)) for values in zip(*columns)]


def run_batch(conn, args, send):
    """Claims, sends and acks one batch; returns how many were claimed."""
    with conn.transaction():
        rows = messages(conn.execute(CLAIM, (args.channel, args.batch, args.lease)).fetchone())
    sent = []
    for message in rows:
        try:
            send(message)
        except Exception as e:  # the sender's error is the message's
            retry = getattr(e, "retry", True)
            with conn.transaction():
                conn.execute("SELECT persona_fail(%s, %s, %s)",
                             (message["message_id"], f"{type(e).__name__}: {e}", retry))
            continue
        sent.append(message["message_id"])
    if sent:
        ack(conn, sent)
    return len(rows)


def serve(args, send):
    conn = psycopg.connect(args.dsn, autocommit=True)
    conn.execute("LISTEN persona_outbox")
    log(f"listening for {args.channel}")
    idle_since = time.monotonic()
    while not stopping:
        n = run_batch(conn, args, send)
        if n:
            idle_since = time.monotonic()
            continue
        if args.exit_when_idle and time.monotonic() - idle_since >= args.exit_when_idle:
            log("idle, exiting")
            break
        # Wait for a wake-up (a notification arriving makes the socket
        # readable; the next statement consumes it), or poll: delayed
        # messages and retries fall due without a notification.
        select.select([conn.fileno()], [], [], args.poll)
    conn.close()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dsn", nargs="?", default="", help="libpq connection string (default: PG* variables)")
    p.add_argument("--channel", required=True)
    p.add_argument("--batch", type=int, default=100, help="messages per claim")
    p.add_argument("--lease", default="30 seconds", help="how long a claim holds its messages")
    p.add_argument("--poll", type=float, default=1.0, help="seconds between claims when idle")
    p.add_argument("--sender", help="module:function to send with (default: JSON lines on stdout)")
    p.add_argument("--exit-when-idle", type=float, default=0,
                   help="exit after this many seconds without a message (tests)")
    args = p.parse_args()
    send = load_sender(args.sender)
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while not stopping:
        try:
            serve(args, send)
            break
        except psycopg.OperationalError as e:
            # The server restarted or the connection dropped: what was
            # claimed and not acked returns when its lease expires.
            log(f"connection lost ({str(e).strip()}); reconnecting")
            time.sleep(1)
    log("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
