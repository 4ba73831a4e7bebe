#!/usr/bin/env python3
"""gRPC side of scripts/defect-figures: each subcommand drives one
measurement against a running `customers` service and prints `name value`
lines. Every loop is bounded in count and time; every call has a deadline.

Usage: figures.py STUBS_DIR SUBCOMMAND ARGS...
"""

import math
import re
import subprocess
import sys
import threading
import time
import urllib.request

sys.path.insert(0, sys.argv[1])
import grpc  # noqa: E402
from customers.v1 import customers_pb2 as pb  # noqa: E402
from customers.v1 import customers_pb2_grpc as pb_grpc  # noqa: E402
from google.protobuf import field_mask_pb2  # noqa: E402

HEALTH_CHECK = "/grpc.health.v1.Health/Check"
SERVICE = "customers.v1.CustomerService"
NO_MATCH = "zzzzqqq"
# A well-formed id that names no customer.
UNKNOWN_ID = "cus_01h2xcejqtf2nbrexx3vqjhp41"
# Lift grpcio's limits on received metadata, to see an error's full trailers
# (grpcio still refuses more than 16 MiB, and says how much it got).
BIG_METADATA = [
    ("grpc.max_metadata_size", 64 << 20),
    ("grpc.absolute_max_metadata_size", 64 << 20),
]


def out(name, value):
    print(f"{name} {value}", flush=True)


def auth(key):
    return (("authorization", f"Bearer {key}"),)


def stub(addr, options=()):
    return pb_grpc.CustomerServiceStub(grpc.insecure_channel(addr, options=list(options)))


# --- small protobuf codec for grpc.health.v1 (one string field each way) ---

def health_request(service):
    data = service.encode()
    assert len(data) < 128
    return b"\x0a" + bytes([len(data)]) + data


def health_status(response):
    # HealthCheckResponse { ServingStatus status = 1; } -> varint after 0x08.
    if not response:
        return 0
    assert response[0] == 0x08
    return response[1]


STATUS_NAMES = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}


def health_check(channel, timeout):
    check = channel.unary_unary(HEALTH_CHECK)  # raw bytes both ways
    try:
        return STATUS_NAMES[health_status(check(health_request(SERVICE), timeout=timeout))]
    except grpc.RpcError as e:
        return "ERROR_" + e.code().name


def proc_status(pid, field):
    """A /proc/PID/status field in KiB (VmRSS, VmHWM)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def scrape(metrics_addr):
    with urllib.request.urlopen(f"http://{metrics_addr}/metrics", timeout=10) as r:
        return r.read()


def gauge(text, name):
    for line in text.decode().splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return line.rsplit(" ", 1)[1]
    return "absent"


def tally(codes):
    counts = {}
    for c in codes:
        counts[c] = counts.get(c, 0) + 1
    return ",".join(f"{k}={v}" for k, v in sorted(counts.items())) or "none"


def trailer_bytes(err):
    """Wire size of an error's grpc-message (percent-encoded) and
    grpc-status-details-bin (base64) trailers."""
    message = (err.details() or "").encode()
    message_bytes = sum(1 if 0x20 <= b <= 0x7E and b != 0x25 else 3 for b in message)
    details = b""
    for key, value in err.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            details = value
    details_bytes = math.ceil(len(details) * 4 / 3)
    return message_bytes + details_bytes, message_bytes, details_bytes


def warm_up(addr, key):
    """One authenticated call, so that the key is cached before measuring."""
    try:
        stub(addr).GetCustomer(pb.GetCustomerRequest(id=UNKNOWN_ID), metadata=auth(key), timeout=10)
    except grpc.RpcError as e:
        return e.code().name
    return "OK"


# --- subcommands ---

def wait_ready(addr, seconds):
    channel = grpc.insecure_channel(addr)
    deadline = time.monotonic() + float(seconds)
    while time.monotonic() < deadline:
        if health_check(channel, 1) == "SERVING":
            return
        time.sleep(0.2)
    sys.exit(f"{addr} not SERVING within {seconds}s")


BACKENDS_SQL = """
    SELECT count(*), count(*) FILTER (WHERE state = 'active')
    FROM pg_stat_activity
    WHERE application_name = 'customers' AND backend_type = 'client backend'"""


def backends(psql_url):
    """(total, active) client backends of the service."""
    row = subprocess.run(["psql", "-XAt", psql_url, "-c", BACKENDS_SQL], check=True,
                         capture_output=True, text=True, timeout=10).stdout.strip()
    total, active = row.split("|")
    return int(total), int(active)


def cancelled_reads(addr, key, psql_url, metrics_addr, count, cancel_ms, mode):
    """Opens COUNT no-match listings, each cancelled CANCEL_MS after it
    started (a client that went away: RST_STREAM, no grpc-timeout). MODE
    `sequential`: one after another, like a shell loop of `timeout 0.03
    grpcurl ...`; `together`: all at once, like that loop with `&`. Counts
    the service's backends meanwhile (peak), at once after, and 1 s later."""
    warm_up(addr, key)
    peak = [0, 0, 0]  # total, active, samples
    done = threading.Event()

    def watch():
        for _ in range(600):  # at most 30 s
            if done.wait(0.05):
                return
            total, active = backends(psql_url)
            peak[0], peak[1], peak[2] = max(peak[0], total), max(peak[1], active), peak[2] + 1

    watcher = threading.Thread(target=watch)
    watcher.start()
    s = stub(addr)
    codes = []

    def start():
        return time.monotonic(), s.ListCustomers(pb.ListCustomersRequest(query=NO_MATCH), metadata=auth(key))

    def cancel(started, call):
        time.sleep(max(0.0, started + int(cancel_ms) / 1000 - time.monotonic()))
        call.cancel()
        codes.append(call.code().name)

    if mode == "sequential":
        for _ in range(int(count)):
            cancel(*start())
    else:
        for started, call in [start() for _ in range(int(count))]:
            cancel(started, call)
    done.set()
    watcher.join()
    for when in ("at_once", "after_1s"):
        if when == "after_1s":
            time.sleep(1)
        total, active = backends(psql_url)
        pool = gauge(scrape(metrics_addr), "customers_db_pool_connections")
        out(f"backends_{when}", f"total={total} active={active} pool_connections={pool}")
    out("backends_peak_during_calls", f"total={peak[0]} active={peak[1]} samples={peak[2]}")
    out("cancelled_call_codes", tally(codes))


def readiness(addr, key, psql_url, slow_calls, checks, seconds):
    """Locks `customers` from psql, starts SLOW_CALLS GetCustomer calls that
    wait on the lock, polls readiness CHECKS times over SECONDS, then
    releases the lock and reports how the slow calls ended."""
    warm_up(addr, key)
    lock = subprocess.Popen(
        ["psql", "-XAtq", "-v", "ON_ERROR_STOP=1", psql_url],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    lock.stdin.write("BEGIN; LOCK TABLE customers IN ACCESS EXCLUSIVE MODE; SELECT 'locked';\n")
    lock.stdin.flush()
    assert lock.stdout.readline().strip() == "locked"
    try:
        s = stub(addr)
        slow = [s.GetCustomer.future(pb.GetCustomerRequest(id=UNKNOWN_ID), metadata=auth(key),
                                     timeout=float(seconds) + 10)
                for _ in range(int(slow_calls))]
        channel = grpc.insecure_channel(addr)
        answers = []
        interval = float(seconds) / int(checks)
        for _ in range(int(checks)):
            started = time.monotonic()
            answers.append(health_check(channel, interval * 4))
            time.sleep(max(0.0, started + interval - time.monotonic()))
    finally:
        lock.stdin.write("ROLLBACK;\n")
        lock.stdin.close()
        lock.wait(timeout=10)
    out("health_checks", len(answers))
    out("health_not_serving", answers.count("NOT_SERVING"))
    out("health_answers", tally(answers))
    codes = []
    for f in slow:
        try:
            f.result(timeout=30)
            codes.append("OK")
        except grpc.RpcError as e:
            codes.append(e.code().name)
    out("slow_call_codes", tally(codes))


def unread_streams(addr, key, pid, metrics_addr, count, wait_s):
    """Opens COUNT listings whose clients never read (each on its own
    connection, 64 KiB windows, no BDP probing) and reports the service's
    RSS before and WAIT_S seconds after."""
    warm_up(addr, key)
    time.sleep(1)
    out("rss_kib_before_streams", proc_status(pid, "VmRSS"))
    options = [
        ("grpc.use_local_subchannel_pool", 1),
        ("grpc.http2.bdp_probe", 0),
        ("grpc.http2.lookahead_bytes", 65535),
        ("grpc.max_receive_message_length", 64 << 20),
    ]
    calls = [stub(addr, options).ListCustomers(pb.ListCustomersRequest(), metadata=auth(key),
                                                timeout=float(wait_s) + 30)
             for _ in range(int(count))]
    time.sleep(float(wait_s))
    out("rss_kib_with_streams", proc_status(pid, "VmRSS"))
    out("stream_buffered_bytes_metric", gauge(scrape(metrics_addr), "customers_stream_buffered_bytes"))
    for call in calls:
        call.cancel()


def metric_labels(addr, pid, metrics_addr, count):
    """COUNT unary calls, each to a different made-up method."""
    channel = grpc.insecure_channel(addr)
    time.sleep(1)
    out("metrics_bytes_before", len(scrape(metrics_addr)))
    out("rss_kib_before", proc_status(pid, "VmRSS"))
    codes = []
    deadline = time.monotonic() + 120
    for i in range(int(count)):
        if time.monotonic() > deadline:
            break
        try:
            channel.unary_unary(f"/made.up{i}.Service/Method{i}")(b"", timeout=10)
            codes.append("OK")
        except grpc.RpcError as e:
            codes.append(e.code().name)
    time.sleep(1)
    out("calls_made", len(codes))
    out("call_codes", tally(codes))
    out("metrics_bytes_after", len(scrape(metrics_addr)))
    out("rss_kib_after", proc_status(pid, "VmRSS"))


def describe_error(name, e):
    out(f"{name}_code", e.code().name)
    out(f"{name}_message", repr((e.details() or "")[:100]))
    refused = re.search(r"metadata size exceeds hard limit \(value length (\d+)", e.details() or "")
    if refused:
        # grpcio caps received metadata at 16 MiB whatever the options say;
        # it names the size of the trailer value it refused.
        out(f"{name}_trailer_bytes", f">={refused.group(1)} (refused by grpcio, one value of {refused.group(1)})")
        return
    total, message, details = trailer_bytes(e)
    out(f"{name}_trailer_bytes", f"{total} (grpc-message {message}, grpc-status-details-bin {details})")


def error_size(addr, key, pid, paths, tries):
    """(a) UpdateCustomer with PATHS unknown mask paths; (b) GetCustomer
    with a 10,000-character id, TRIES times from a grpcio client with its
    default metadata limits (over 8 KiB of trailers may be refused at
    random), once from one that accepts anything."""
    warm_up(addr, key)
    big = stub(addr, BIG_METADATA)
    first = next(iter(big.ListCustomers(pb.ListCustomersRequest(limit=1), metadata=auth(key), timeout=10)))
    request = pb.UpdateCustomerRequest(
        customer=pb.Customer(id=first.customer.id),
        update_mask=field_mask_pb2.FieldMask(paths=[f"n{i:010d}" for i in range(int(paths))]))
    out("update_request_bytes", request.ByteSize())
    time.sleep(1)
    hwm_before = proc_status(pid, "VmHWM")
    try:
        big.UpdateCustomer(request, metadata=auth(key), timeout=60)
        out("update_code", "OK")
    except grpc.RpcError as e:
        describe_error("update", e)
    time.sleep(1)
    hwm_after = proc_status(pid, "VmHWM")
    out("update_vmhwm_kib", f"before={hwm_before} after={hwm_after} delta={hwm_after - hwm_before}")

    long_id = pb.GetCustomerRequest(id="x" * 10_000)
    codes = []
    default = stub(addr)
    for _ in range(int(tries)):
        try:
            default.GetCustomer(long_id, metadata=auth(key), timeout=10)
            codes.append("OK")
        except grpc.RpcError as e:
            codes.append(e.code().name)
    out("long_id_codes_default_client", tally(codes))
    try:
        big.GetCustomer(long_id, metadata=auth(key), timeout=10)
        out("long_id_code", "OK")
    except grpc.RpcError as e:
        describe_error("long_id", e)


COMMANDS = {
    "wait-ready": wait_ready,
    "cancelled-reads": cancelled_reads,
    "readiness": readiness,
    "unread-streams": unread_streams,
    "metric-labels": metric_labels,
    "error-size": error_size,
}

if __name__ == "__main__":
    COMMANDS[sys.argv[2]](*sys.argv[3:])
