#!/usr/bin/python3
"""Workers and listeners for test/bench/outbox.sh (Debian's python3-psycopg).

  outbox_workers.py persona N_WORKERS BATCH CHANNEL   drain persona's outbox
  outbox_workers.py plain N_WORKERS BATCH             drain the pgmq-style table
  outbox_workers.py latency RATE SECONDS USERS        commit -> notification

Drains print "<messages> <seconds> <the workers' CPU seconds>"; latency
prints "p50_ms p99_ms n".
Each worker is its own process (as examples/worker.py): claim a batch,
render (persona_claim renders; the plain side decodes the jsonb), ack by id.
"""
import multiprocessing as mp
import os
import select
import sys
import threading
import time

import psycopg


# Both sides fetch a batch as examples/worker.py does (its own code, for
# persona): json_agg of each column, each decoded by one json.loads, the
# ids acked as a bigint[] literal. psycopg's per-row decoding is pure
# Python on Debian and would cost more than either server.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "examples"))
from worker import CLAIM, id_array, messages  # noqa: E402

PLAIN_FIELDS = ("id", "vt", "read_ct", "enqueued_at", "message")
PLAIN_CLAIM = (
    "WITH c AS (SELECT id FROM bench_q WHERE vt <= now() ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED), "
    "u AS (UPDATE bench_q AS q SET vt = now() + interval '30 seconds', read_ct = read_ct + 1 "
    "        FROM c WHERE q.id = c.id RETURNING q.*) "
    "SELECT " + ", ".join(f"json_agg(u.{f})" for f in PLAIN_FIELDS) + " FROM u")


def drain_persona(channel, batch, out):
    n = 0
    with psycopg.connect(autocommit=True) as conn:
        while True:
            rows = messages(conn.execute(CLAIM, (channel, batch, "30 seconds")).fetchone())
            if not rows:
                break
            for m in rows:                   # the sender: nothing to send
                assert m["content"] is not None
            conn.execute("SELECT persona_ack(%s::bigint[])", (id_array(m["message_id"] for m in rows),))
            n += len(rows)
    t = os.times()
    out.put((n, t.user + t.system))


def drain_plain(batch, out):
    n = 0
    with psycopg.connect(autocommit=True) as conn:
        while True:
            cols = conn.execute(PLAIN_CLAIM, (batch,)).fetchone()
            rows = [] if cols[0] is None else [dict(zip(PLAIN_FIELDS, v)) for v in zip(*cols)]
            if not rows:
                break
            for m in rows:
                assert m["message"] is not None
            conn.execute("DELETE FROM bench_q WHERE id = ANY(%s::bigint[])", (id_array(m["id"] for m in rows),))
            n += len(rows)
    t = os.times()
    out.put((n, t.user + t.system))


def drain(kind, workers, batch, channel=None):
    out = mp.Queue()
    target = drain_persona if kind == "persona" else drain_plain
    args = (channel, batch, out) if kind == "persona" else (batch, out)
    procs = [mp.Process(target=target, args=args) for _ in range(workers)]
    t0 = time.monotonic()
    for p in procs:
        p.start()
    done = [out.get() for _ in procs]
    for p in procs:
        p.join()
    print(sum(d[0] for d in done), round(time.monotonic() - t0, 3), round(sum(d[1] for d in done), 2))


def latency(rate, seconds, users):
    """A producer commits events that each fire a trigger at `rate` per
    second; a listener on persona_outbox notes when each notification
    arrives. A commit's latency: from its commit returning to the first
    notification received after it."""
    listen = psycopg.connect(autocommit=True)
    listen.execute("LISTEN persona_outbox")
    commits = []
    arrivals = []
    stop = threading.Event()

    def listener():
        gen = listen.notifies()
        for _ in gen:
            arrivals.append(time.monotonic())
            if stop.is_set():
                gen.close()

    th = threading.Thread(target=listener, daemon=True)
    th.start()
    prod = psycopg.connect(autocommit=True)
    interval = 1.0 / rate
    t_next = time.monotonic()
    end = t_next + seconds
    i = 0
    while t_next < end:
        now = time.monotonic()
        if now < t_next:
            time.sleep(t_next - now)
        prod.execute("SELECT persona_track(%s, 'bench_fire')", ("user-%d" % (1 + i % users),))
        commits.append(time.monotonic())
        i += 1
        t_next += interval
    time.sleep(0.2)
    stop.set()
    prod.execute("NOTIFY persona_outbox, 'bench-end'")
    th.join(2)
    arr = sorted(arrivals)
    lat = []
    j = 0
    for c in commits:
        while j < len(arr) and arr[j] < c:
            j += 1
        if j < len(arr):
            lat.append((arr[j] - c) * 1000)
    lat.sort()
    if not lat:
        print("nan nan 0")
        return
    p = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))]
    print("%.2f %.2f %d" % (p(0.5), p(0.99), len(lat)))


if __name__ == "__main__":
    kind = sys.argv[1]
    if kind == "latency":
        latency(float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]))
    else:
        drain(kind, int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] if len(sys.argv) > 4 else None)
