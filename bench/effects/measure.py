#!/usr/bin/env python3
"""Effects, timers and the event feed, measured against two running replicas (bench/effects/run starts them).

  measure.py PORT_A PORT_B CONNINFO [PORT_C]

Prints commit-to-dispatch and timer lateness (from the database's own timestamps), and SSE delivery on one replica
and across two (from this client's clock: POST sent to frame read)."""
import http.client, json, subprocess, sys, threading, time

port_a, port_b, conninfo = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
port_c = int(sys.argv[4]) if len(sys.argv) > 4 else None


def post(port, path, body):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
    response = conn.getresponse()
    response.read()
    conn.close()
    return response.status


def sql(statement):
    return subprocess.run(["psql", "-qtA", conninfo, "-c", statement], check=True, capture_output=True,
                          text=True).stdout.strip()


def wait_for(statement, expected, seconds=60):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if sql(statement) == expected:
            return True
        time.sleep(0.1)
    return False


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


# Commit to dispatch: one effect per command, sent one at a time at about 50/s.
for i in range(200):
    post(port_a, "/v1/timer/lat%d/arm" % i, {"count": 1})
    time.sleep(0.02)
wait_for("SELECT count(*) FROM entities WHERE function='timer' AND entity_id LIKE 'lat%-0'", "200")
rows = sql("""SELECT extract(epoch FROM f.created_at - a.created_at) * 1000 FROM entity_events a
  JOIN entity_events f ON f.function = 'timer' AND f.entity_id = a.entity_id || '-0'
  WHERE a.function = 'timer' AND a.entity_id LIKE 'lat%' AND a.entity_id NOT LIKE '%-0'""").split()
latency = [float(x) for x in rows]
print("commit to dispatch (one replica commits, either dispatches), n=%d: p50 %.1f ms, p99 %.1f ms" % (
    len(latency), pct(latency, 50), pct(latency, 99)))

# Timer lateness: 200 timers due 1 s after their commit, armed 20 ms apart.
for i in range(200):
    post(port_a, "/v1/timer/tmr%d/arm" % i, {"count": 1, "delay_ms": 1000})
    time.sleep(0.02)
wait_for("SELECT count(*) FROM entities WHERE function='timer' AND entity_id LIKE 'tmr%-0'", "200")
rows = sql("""SELECT extract(epoch FROM f.created_at - a.created_at) * 1000 - 1000 FROM entity_events a
  JOIN entity_events f ON f.function = 'timer' AND f.entity_id = a.entity_id || '-0'
  WHERE a.function = 'timer' AND a.entity_id LIKE 'tmr%' AND a.entity_id NOT LIKE '%-0'""").split()
late = [float(x) for x in rows]
print("timer lateness, n=%d: p50 %.1f ms, p99 %.1f ms, earliest %.1f ms (never below 0)" % (
    len(late), pct(late, 50), pct(late, 99), min(late)))


def sse_delivery(sub_port, write_port, entity, samples=100):
    conn = http.client.HTTPConnection("127.0.0.1", sub_port, timeout=30)
    conn.request("GET", "/v1/timer/%s/events" % entity, headers={"Accept": "text/event-stream"})
    response = conn.getresponse()
    assert response.status == 200, response.status
    delays = []
    for _ in range(samples):
        sent = time.monotonic()
        post(write_port, "/v1/timer/%s/emit" % entity, {"n": 1})
        while True:
            line = response.fp.readline()
            if line.startswith(b"data:"):
                delays.append((time.monotonic() - sent) * 1000)
                break
    conn.close()
    return delays


one = sse_delivery(port_a, port_a, "sse-one")
print("SSE delivery, one replica, n=%d: p50 %.1f ms, p99 %.1f ms (POST sent to frame read)" % (
    len(one), pct(one, 50), pct(one, 99)))
two = sse_delivery(port_b, port_a, "sse-two")
print("SSE delivery, across two replicas, n=%d: p50 %.1f ms, p99 %.1f ms" % (len(two), pct(two, 50), pct(two, 99)))
if port_c:
    polled = sse_delivery(port_c, port_a, "sse-poll", samples=50)
    print("SSE delivery, across two replicas, the subscriber's polling alone (--poll-only, --feed-poll 200ms), n=%d:"
          " p50 %.1f ms, p99 %.1f ms" % (len(polled), pct(polled, 50), pct(polled, 99)))
