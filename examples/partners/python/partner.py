#!/usr/bin/env python3
"""A reference Waybill shipping partner in Python, written from docs/partners.md and proto/ alone.

It consumes the partner's Kafka topic (confluent-kafka), checks every record as the contract's
section 3.5 says, creates at most one shipment per order id in its own durable store (a SQLite
file: this program's "shipment system"), reports RECEIVED_BY_PARTNER with the shipment's
tracking id and, a little later, SHIPPED, each report signed with the partner's Ed25519 key
(PyJWT, EdDSA) and sent with grpcio to the StatusIngest address the order carried. The protobuf
and gRPC stubs are generated from proto/ at start-up (grpcio-tools) into a temporary directory.

Why nothing is lost and nothing ships twice, whichever line a SIGKILL hits:

- the shipment row and the report it owes are written in ONE SQLite transaction, keyed by the
  order id (the idempotency key): a copy of an order that is already in the store creates
  nothing, it only makes sure the owed report goes out;
- an offset is committed only after its record is safe (section 3.6): its shipment and report
  are committed to SQLite (or it was set aside). A crash before that re-reads the record, and
  the store answers it;
- a report stays owed in SQLite until StatusIngest accepted it (or answered duplicate); every
  attempt signs a fresh token, so a retry of a report that did land is answered duplicate, never
  refused as a replay.

Usage (every flag has a WAYBILL_* environment fallback, see --help):

    python3 partner.py --partner-id acme --kafka-brokers 127.0.0.1:9092 \
        --key-file acme-2026.pem --key-id acme-2026 --audience waybill-local --db acme.db
"""

import argparse
import glob
import importlib
import logging
import os
import random
import re
import secrets
import signal
import sqlite3
import sys
import tempfile
import time
import urllib.parse
import uuid

import grpc
import jwt
from confluent_kafka import Consumer, KafkaError, TopicPartition
from cryptography.hazmat.primitives import serialization

LOG = logging.getLogger("partner")

# The contract's headers (docs/partners.md, 3.3).
MESSAGE_TYPE = "waybill-message-type"
SCHEMA_VERSION = "waybill-schema-version"
CORRELATION_ID = "waybill-correlation-id"
REPLY_TO = "waybill-reply-to"
REGION = "waybill-region"
TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
DISPATCHED_ORDER = "waybill.v1.DispatchedOrder"
KNOWN_SCHEMA_VERSIONS = {"1"}
RETRY_AFTER_MS = "waybill-retry-after-ms"

TOKEN_LIFETIME_SECONDS = 120
RPC_TIMEOUT_SECONDS = 5.0
BACKOFF_CAP_SECONDS = 30.0
TRACEPARENT_RE = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
TOKEN_REASON_RE = re.compile(r"^report token refused: ([a-z_]+):")

# Token refusals worth retrying with a fresh token (section 5): clocks, a key enrolled late.
# Every other token reason is a bug on this side: retrying the same report cannot help.
RETRYABLE_TOKEN_REASONS = {"expired", "issued_in_future", "unknown_key"}
# Answers after which the same report can never be accepted (section 5).
FINAL_CODES = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.OUT_OF_RANGE,
}


def now_ms():
    return int(time.time() * 1000)


class SetAside(Exception):
    """A record that is not an order this partner may believe (section 3.5)."""


# --- stubs ------------------------------------------------------------------------------------


def generate_stubs(proto_dir):
    """Compiles proto_dir/waybill/v1/*.proto into a temporary directory and imports them."""
    from grpc_tools import protoc
    import grpc_tools

    out = tempfile.mkdtemp(prefix="waybill-py-stubs-")
    well_known = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    files = sorted(glob.glob(os.path.join(proto_dir, "waybill", "v1", "*.proto")))
    if not files:
        sys.exit(f"no .proto files under {proto_dir}/waybill/v1 (give --proto-dir)")
    args = [
        "grpc_tools.protoc",
        f"-I{proto_dir}",
        f"-I{well_known}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        *files,
    ]
    if protoc.main(args) != 0:
        sys.exit("protoc failed on " + " ".join(files))
    sys.path.insert(0, out)
    return (
        importlib.import_module("waybill.v1.common_pb2"),
        importlib.import_module("waybill.v1.kafka_pb2"),
        importlib.import_module("waybill.v1.status_ingest_pb2"),
        importlib.import_module("waybill.v1.status_ingest_pb2_grpc"),
    )


# --- the durable store: this partner's shipment system ---------------------------------------

SCHEMA = """
CREATE TABLE IF NOT EXISTS shipments (
    order_id TEXT PRIMARY KEY,
    tracking_id TEXT NOT NULL UNIQUE,
    created_at_ms INTEGER NOT NULL,
    region TEXT NOT NULL,
    first_send_count INTEGER NOT NULL,
    copies INTEGER NOT NULL DEFAULT 1
);
CREATE TABLE IF NOT EXISTS rejections (
    order_id TEXT PRIMARY KEY,
    reason TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    copies INTEGER NOT NULL DEFAULT 1
);
CREATE TABLE IF NOT EXISTS reports (
    report_id TEXT PRIMARY KEY,
    order_id TEXT NOT NULL,
    status TEXT NOT NULL,
    tracking_id TEXT NOT NULL,
    detail TEXT NOT NULL,
    detail_code TEXT NOT NULL,
    action_required INTEGER NOT NULL,
    occurred_at_ms INTEGER NOT NULL,
    reply_to TEXT NOT NULL,
    traceparent TEXT,
    tracestate TEXT,
    state TEXT NOT NULL DEFAULT 'owed',
    attempts INTEGER NOT NULL DEFAULT 0,
    replays INTEGER NOT NULL DEFAULT 0,
    next_attempt_ms INTEGER NOT NULL,
    last_error TEXT,
    duplicate INTEGER
);
CREATE INDEX IF NOT EXISTS reports_owed ON reports (state, next_attempt_ms);
CREATE TABLE IF NOT EXISTS set_aside (
    topic TEXT NOT NULL,
    partition INTEGER NOT NULL,
    "offset" INTEGER NOT NULL,
    record_key TEXT,
    reason TEXT NOT NULL,
    at_ms INTEGER NOT NULL,
    PRIMARY KEY (topic, partition, "offset")
);
"""


class Store:
    def __init__(self, path):
        # Autocommit mode: every transaction below is an explicit BEGIN IMMEDIATE ... COMMIT.
        self.db = sqlite3.connect(path, isolation_level=None, timeout=30)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(SCHEMA)

    def transaction(self):
        return _Transaction(self.db)

    def take_order(self, order, delivery, decide):
        """The order's answer from the store, or a new one made by decide() and stored together
        with the report it owes, in one transaction. Returns (new, answer)."""
        with self.transaction() as db:
            row = db.execute(
                "SELECT tracking_id FROM shipments WHERE order_id = ?", (order.order_id,)
            ).fetchone()
            if row:
                db.execute(
                    "UPDATE shipments SET copies = copies + 1 WHERE order_id = ?",
                    (order.order_id,),
                )
                return False, ("accepted", row[0])
            row = db.execute(
                "SELECT reason FROM rejections WHERE order_id = ?", (order.order_id,)
            ).fetchone()
            if row:
                db.execute(
                    "UPDATE rejections SET copies = copies + 1 WHERE order_id = ?",
                    (order.order_id,),
                )
                return False, ("rejected", row[0])
            answer = decide(order)
            at = now_ms()
            if answer[0] == "accepted":
                tracking_id = self._new_tracking_id(db)
                db.execute(
                    "INSERT INTO shipments (order_id, tracking_id, created_at_ms, region, "
                    "first_send_count) VALUES (?, ?, ?, ?, ?)",
                    (order.order_id, tracking_id, at, delivery["region"], order.send_count),
                )
                answer = ("accepted", tracking_id)
                report = ("RECEIVED_BY_PARTNER", tracking_id, "", "")
            else:
                db.execute(
                    "INSERT INTO rejections (order_id, reason, created_at_ms) VALUES (?, ?, ?)",
                    (order.order_id, answer[1], at),
                )
                report = ("REJECTED_BY_PARTNER", "", answer[1], "OUT_OF_AREA")
            self._owe(db, order.order_id, report, at, delivery)
            return True, answer

    @staticmethod
    def _new_tracking_id(db):
        # Random, unique per order, not derived from the order id (a UUIDv7 starts with its
        # timestamp: ids made from it would collide and leak the time).
        while True:
            tracking_id = "PY" + secrets.token_hex(5).upper()
            if not db.execute(
                "SELECT 1 FROM shipments WHERE tracking_id = ?", (tracking_id,)
            ).fetchone():
                return tracking_id

    @staticmethod
    def _owe(db, order_id, report, at, delivery):
        status, tracking_id, detail, detail_code = report
        # Deterministic report ids, unique per partner across orders (section 4.3).
        db.execute(
            "INSERT OR IGNORE INTO reports (report_id, order_id, status, tracking_id, detail, "
            "detail_code, action_required, occurred_at_ms, reply_to, traceparent, tracestate, "
            "next_attempt_ms) VALUES (?, ?, ?, ?, ?, ?, 0, ?, ?, ?, ?, ?)",
            (
                f"{order_id}:{status}",
                order_id,
                status,
                tracking_id,
                detail,
                detail_code,
                at,
                delivery["reply_to"],
                delivery["traceparent"],
                delivery["tracestate"],
                at,
            ),
        )

    def ship_due(self, ship_after_ms):
        """Owes SHIPPED for every order whose receipt was accepted ship_after_ms ago."""
        with self.transaction() as db:
            rows = db.execute(
                "SELECT s.order_id, s.tracking_id, r.reply_to, r.traceparent, r.tracestate "
                "FROM shipments s JOIN reports r "
                "  ON r.report_id = s.order_id || ':RECEIVED_BY_PARTNER' "
                "WHERE r.state = 'accepted' AND s.created_at_ms <= ? AND NOT EXISTS ("
                "  SELECT 1 FROM reports x WHERE x.report_id = s.order_id || ':SHIPPED')",
                (now_ms() - ship_after_ms,),
            ).fetchall()
            at = now_ms()
            for order_id, tracking_id, reply_to, traceparent, tracestate in rows:
                delivery = {
                    "reply_to": reply_to,
                    "traceparent": traceparent,
                    "tracestate": tracestate,
                }
                self._owe(db, order_id, ("SHIPPED", tracking_id, "left the depot", ""), at, delivery)
            return len(rows)

    def set_aside(self, msg, reason):
        key = msg.key().decode("utf-8", "replace") if msg.key() else None
        with self.transaction() as db:
            db.execute(
                'INSERT OR IGNORE INTO set_aside (topic, partition, "offset", record_key, reason, '
                "at_ms) VALUES (?, ?, ?, ?, ?, ?)",
                (msg.topic(), msg.partition(), msg.offset(), key, reason, now_ms()),
            )

    def owed(self, limit=100, order_id=None):
        sql = (
            "SELECT report_id, order_id, status, tracking_id, detail, detail_code, "
            "action_required, occurred_at_ms, reply_to, traceparent, tracestate, attempts, "
            "replays FROM reports WHERE state = 'owed' AND next_attempt_ms <= ?"
        )
        args = [now_ms()]
        if order_id is not None:
            sql += " AND order_id = ?"
            args.append(order_id)
        sql += " ORDER BY next_attempt_ms LIMIT ?"
        args.append(limit)
        names = (
            "report_id order_id status tracking_id detail detail_code action_required "
            "occurred_at_ms reply_to traceparent tracestate attempts replays"
        ).split()
        return [dict(zip(names, row)) for row in self.db.execute(sql, args).fetchall()]

    def report_done(self, report_id, duplicate):
        self.db.execute(
            "UPDATE reports SET state = 'accepted', attempts = attempts + 1, duplicate = ?, "
            "last_error = NULL WHERE report_id = ?",
            (1 if duplicate else 0, report_id),
        )

    def report_retry(self, report_id, delay_s, error, replayed=False):
        self.db.execute(
            "UPDATE reports SET attempts = attempts + 1, replays = replays + ?, "
            "next_attempt_ms = ?, last_error = ? WHERE report_id = ?",
            (1 if replayed else 0, now_ms() + int(delay_s * 1000), error, report_id),
        )

    def report_refused(self, report_id, error):
        self.db.execute(
            "UPDATE reports SET state = 'refused', attempts = attempts + 1, last_error = ? "
            "WHERE report_id = ?",
            (error, report_id),
        )


class _Transaction:
    def __init__(self, db):
        self.db = db

    def __enter__(self):
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, kind, value, traceback):
        self.db.execute("ROLLBACK" if kind else "COMMIT")
        return False


# --- records ----------------------------------------------------------------------------------


def check_record(msg, kafka_pb2):
    """The checks of section 3.5, in order: the order and what is needed to answer it."""
    headers = {}
    for name, value in msg.headers() or []:
        if name in headers:
            continue  # the first of a repeated header, as a lookup by name finds it
        try:
            headers[name] = None if value is None else value.decode("utf-8")
        except UnicodeDecodeError:
            headers[name] = UnicodeDecodeError

    def header(name, required=True):
        value = headers.get(name)
        if value is UnicodeDecodeError:
            raise SetAside(f"header {name} is not UTF-8 text")
        if value is None and required:
            raise SetAside(f"header {name} is missing")
        return value

    message_type = header(MESSAGE_TYPE)
    if message_type != DISPATCHED_ORDER:
        raise SetAside(f"message type {message_type!r} is not a dispatched order")
    version = header(SCHEMA_VERSION)
    if version not in KNOWN_SCHEMA_VERSIONS:
        raise SetAside(f"schema version {version!r} is not one this partner knows")
    correlation_id = header(CORRELATION_ID)
    reply_to = header(REPLY_TO)
    region = header(REGION)
    order = kafka_pb2.DispatchedOrder()
    try:
        order.ParseFromString(msg.value() or b"")
    except Exception as error:  # the library's DecodeError
        raise SetAside(f"payload is not a waybill.v1.DispatchedOrder: {error}")
    if order.order_id != correlation_id:
        raise SetAside(
            f"correlation id {correlation_id!r} does not match the payload's order id "
            f"{order.order_id!r}"
        )
    target = urllib.parse.urlsplit(reply_to)
    if target.scheme not in ("http", "https") or not target.hostname or not target.port:
        raise SetAside(f"reply-to {reply_to!r} is not http(s)://host:port")
    try:
        parent = header(TRACEPARENT, required=False)
        tracestate = header(TRACESTATE, required=False)
    except SetAside:
        parent, tracestate = None, None  # an optional header: drop it, keep the order
    traceparent = continue_trace(parent)
    return order, {
        "reply_to": reply_to,
        "region": region,
        "traceparent": traceparent,
        "tracestate": tracestate if traceparent else None,
    }


def continue_trace(parent):
    """The trace of `parent` with a span id of this partner's own (section 4.6), or None."""
    match = TRACEPARENT_RE.match((parent or "").strip())
    if not match or set(match.group(1)) == {"0"} or set(match.group(2)) == {"0"}:
        return None
    span_id = secrets.token_hex(8)
    while set(span_id) == {"0"}:
        span_id = secrets.token_hex(8)
    return f"00-{match.group(1)}-{span_id}-{match.group(3)}"


def decider(work_ms):
    """This partner's business rule, called only for an order new to the store (inside the
    transaction that stores its answer): it carries everything except addresses marked
    [reject]. `work_ms` is how long its system takes to create a shipment (simulated)."""

    def decide(order):
        if "[reject]" in order.ship_to.line2:
            return ("rejected", "sandbox marker [reject]: not carried")
        if work_ms:
            time.sleep(work_ms / 1000.0)
        return ("accepted", None)

    return decide


# --- reports ----------------------------------------------------------------------------------


class Reporter:
    def __init__(self, args, store, common_pb2, ingest_pb2, ingest_grpc):
        self.args = args
        self.store = store
        self.common_pb2 = common_pb2
        self.ingest_pb2 = ingest_pb2
        self.ingest_grpc = ingest_grpc
        with open(args.key_file, "rb") as key_file:
            self.key = serialization.load_pem_private_key(key_file.read(), password=None)
        self.ca = open(args.report_tls_ca, "rb").read() if args.report_tls_ca else None
        self.stubs = {}

    def stub(self, reply_to):
        stub = self.stubs.get(reply_to)
        if stub is None:
            target = urllib.parse.urlsplit(reply_to)
            address = f"{target.hostname}:{target.port}"
            if target.scheme == "https":
                credentials = grpc.ssl_channel_credentials(root_certificates=self.ca)
                channel = grpc.secure_channel(address, credentials)
            else:
                channel = grpc.insecure_channel(address)
            stub = self.ingest_grpc.StatusIngestStub(channel)
            self.stubs[reply_to] = stub
        return stub

    def token(self, report):
        """A fresh token for `report`: every field is a claim, `status` by its short name."""
        now = int(time.time())
        claims = {
            "iss": self.args.partner_id,
            "sub": report["order_id"],
            "aud": self.args.audience,
            "iat": now,
            "exp": now + TOKEN_LIFETIME_SECONDS,
            "jti": str(uuid.uuid4()),
            "report_id": report["report_id"],
            "status": report["status"],
            "tracking_id": report["tracking_id"],
            "detail": report["detail"],
            "detail_code": report["detail_code"],
            "action_required": bool(report["action_required"]),
            "occurred_at": rfc3339(report["occurred_at_ms"]),
        }
        return jwt.encode(
            claims,
            self.key,
            algorithm="EdDSA",
            headers={"kid": self.args.key_id, "typ": "wb-report+jwt"},
        )

    def request(self, report):
        ms = report["occurred_at_ms"]
        request = self.ingest_pb2.ReportStatusRequest(
            correlation_id=report["order_id"],
            partner_id=self.args.partner_id,
            report_id=report["report_id"],
            status=self.common_pb2.OrderStatus.Value("ORDER_STATUS_" + report["status"]),
            tracking_id=report["tracking_id"],
            detail=report["detail"],
            detail_code=report["detail_code"],
            action_required=bool(report["action_required"]),
            token=self.token(report),
        )
        request.occurred_at.seconds = ms // 1000
        request.occurred_at.nanos = (ms % 1000) * 1_000_000
        return request

    def send(self, report):
        """One attempt, its outcome stored. Returns a delay when StatusIngest asked to retry
        within moments (the report stays owed either way)."""
        metadata = []
        if report["traceparent"]:
            metadata.append(("traceparent", report["traceparent"]))
            if report["tracestate"]:
                metadata.append(("tracestate", report["tracestate"]))
        rid = report["report_id"]
        try:
            response = self.stub(report["reply_to"]).ReportStatus(
                self.request(report), timeout=RPC_TIMEOUT_SECONDS, metadata=metadata
            )
        except grpc.RpcError as error:
            return self.failed(report, error)
        self.store.report_done(rid, response.duplicate)
        LOG.info(
            "report %s accepted%s (trace %s)",
            rid,
            " as a duplicate" if response.duplicate else "",
            (report["traceparent"] or "-").split("-")[1] if report["traceparent"] else "-",
        )
        return None

    def failed(self, report, error):
        rid, code, message = report["report_id"], error.code(), error.details() or ""
        text = f"{code.name}: {message}"
        if code in FINAL_CODES:
            LOG.error("report %s refused for good, kept as refused: %s", rid, text)
            self.store.report_refused(rid, text)
            return None
        if code == grpc.StatusCode.UNAUTHENTICATED:
            match = TOKEN_REASON_RE.match(message)
            reason = match.group(1) if match else "unknown"
            if reason == "replayed":
                # Every attempt signs a fresh token, so a replay means this token id was used
                # before: retry once at once with another fresh one; a second replay means the
                # token ids are not unique, which no retry mends.
                if report["replays"] >= 1:
                    LOG.error("report %s replayed twice, kept as refused: %s", rid, text)
                    self.store.report_refused(rid, text)
                else:
                    LOG.warning("report %s: token replayed, retrying with a fresh one", rid)
                    self.store.report_retry(rid, 0, text, replayed=True)
                return None
            if reason not in RETRYABLE_TOKEN_REASONS:
                LOG.error("report %s: token refused (%s), kept as refused: %s", rid, reason, text)
                self.store.report_refused(rid, text)
                return None
        asked = retry_after(error)
        if asked is not None:
            self.store.report_retry(rid, asked, text)
            return asked
        delay = min(BACKOFF_CAP_SECONDS, 0.2 * 2 ** min(report["attempts"], 10))
        delay *= random.uniform(0.5, 1.0)
        LOG.warning("report %s failed (%s), retrying in %.2f s", rid, text, delay)
        self.store.report_retry(rid, delay, text)
        return None

    def send_owed(self, order_id=None, budget_s=2.0):
        """Sends the reports owed now (of one order, or all), within about budget_s."""
        started = time.monotonic()
        for report in self.store.owed(order_id=order_id):
            # StatusIngest asked for a retry within moments (the order is being handed over
            # right now): made here, doubling from the delay asked, at most 8 times.
            quick = 0
            while True:
                asked = self.send(report)
                if asked is None or quick >= 8:
                    break
                time.sleep(min(0.25, asked * 2**quick))
                quick += 1
            if time.monotonic() - started > budget_s:
                break


def retry_after(error):
    for key, value in error.trailing_metadata() or ():
        if key == RETRY_AFTER_MS:
            try:
                return max(0.0, int(str(value).strip())) / 1000.0
            except ValueError:
                return None
    return None


def rfc3339(ms):
    seconds, millis = divmod(ms, 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


# --- the program ------------------------------------------------------------------------------


def parse_args(argv):
    env = os.environ.get
    here = os.path.dirname(os.path.abspath(__file__))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--partner-id", default=env("WAYBILL_PARTNER_ID"))
    parser.add_argument("--kafka-brokers", default=env("WAYBILL_KAFKA_BROKERS", "127.0.0.1:9092"))
    parser.add_argument("--topic-prefix", default=env("WAYBILL_TOPIC_PREFIX", "waybill.partner."))
    parser.add_argument(
        "--kafka-option",
        action="append",
        default=[o for o in env("WAYBILL_KAFKA_OPTIONS", "").split(",") if o],
        help="librdkafka property key=value (repeat): SASL, TLS, session.timeout.ms, ...",
    )
    parser.add_argument("--key-file", default=env("WAYBILL_PARTNER_KEY_FILE"))
    parser.add_argument("--key-id", default=env("WAYBILL_PARTNER_KEY_ID"))
    parser.add_argument("--audience", default=env("WAYBILL_TOKEN_AUDIENCE", "waybill-local"))
    parser.add_argument("--report-tls-ca", default=env("WAYBILL_REPORT_TLS_CA"))
    parser.add_argument("--db", default=env("WAYBILL_PARTNER_DB"))
    parser.add_argument(
        "--proto-dir",
        default=env("WAYBILL_PROTO_DIR", os.path.join(here, "..", "..", "..", "proto")),
    )
    parser.add_argument(
        "--ship-after-ms", type=int, default=int(env("WAYBILL_SHIP_AFTER_MS", "1000"))
    )
    parser.add_argument(
        "--work-ms",
        type=int,
        default=int(env("WAYBILL_WORK_MS", "0")),
        help="how long creating a shipment takes in the partner's system (simulated)",
    )
    parser.add_argument(
        "--crash-after-shipments",
        type=int,
        default=int(env("WAYBILL_CRASH_AFTER_SHIPMENTS", "0")),
        help="testing: SIGKILL this process right after its Nth new shipment is stored, "
        "before the report is sent or the offset committed (0: never)",
    )
    args = parser.parse_args(argv)
    for name in ("partner_id", "key_file", "key_id"):
        if not getattr(args, name):
            parser.error(f"--{name.replace('_', '-')} is required")
    args.db = args.db or f"{args.partner_id}-shipments.db"
    return args


def consumer_config(args):
    config = {
        "bootstrap.servers": args.kafka_brokers,
        # The group Waybill watches (section 3.2), shared by every instance of this partner.
        "group.id": f"waybill-connector.{args.partner_id}",
        "client.id": f"{args.partner_id}-python-partner",
        # A new group reads from the log's start: orders sent before it joined are not skipped.
        "auto.offset.reset": "earliest",
        # Offsets are committed here, only past records whose work is safe (section 3.6).
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "fetch.wait.max.ms": 100,
    }
    for option in args.kafka_option:
        key, _, value = option.partition("=")
        config[key.strip()] = value.strip()
    return config


def main(argv=None):
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    args = parse_args(argv)
    common_pb2, kafka_pb2, ingest_pb2, ingest_grpc = generate_stubs(
        os.path.abspath(args.proto_dir)
    )
    store = Store(args.db)
    reporter = Reporter(args, store, common_pb2, ingest_pb2, ingest_grpc)
    topic = args.topic_prefix + args.partner_id
    decide = decider(args.work_ms)

    stopping = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopping.append(True))

    consumer = Consumer(consumer_config(args))
    consumer.subscribe(
        [topic],
        on_assign=lambda _, parts: LOG.info(
            "partitions assigned: %s", [p.partition for p in parts]
        ),
        on_revoke=lambda _, parts: LOG.info(
            "partitions revoked: %s", [p.partition for p in parts]
        ),
    )
    LOG.info("consuming %s as group waybill-connector.%s", topic, args.partner_id)
    new_shipments = 0
    next_chores = 0.0
    while not stopping:
        msg = consumer.poll(0.1)
        if msg is not None and msg.error():
            if msg.error().code() != KafkaError._PARTITION_EOF:
                LOG.warning("kafka: %s", msg.error())
            msg = None
        if msg is not None:
            order = None
            try:
                order, delivery = check_record(msg, kafka_pb2)
            except SetAside as reason:
                LOG.warning(
                    "record %s/%d/%d set aside: %s",
                    msg.topic(),
                    msg.partition(),
                    msg.offset(),
                    reason,
                )
                store.set_aside(msg, str(reason))
            if order is not None:
                new, answer = store.take_order(order, delivery, decide)
                if new:
                    new_shipments += answer[0] == "accepted"
                    LOG.info(
                        "order %s %s %s (send %d)",
                        order.order_id,
                        answer[0],
                        answer[1],
                        order.send_count,
                    )
                    if args.crash_after_shipments and new_shipments >= args.crash_after_shipments:
                        LOG.warning("crashing on purpose after shipment %d", new_shipments)
                        os.kill(os.getpid(), signal.SIGKILL)
                else:
                    LOG.info(
                        "order %s seen before (send %d): answered from the store, nothing new",
                        order.order_id,
                        order.send_count,
                    )
                reporter.send_owed(order_id=order.order_id)
            # Safe now: the answer and its report are in the store (or the record set aside).
            try:
                consumer.commit(
                    offsets=[TopicPartition(msg.topic(), msg.partition(), msg.offset() + 1)],
                    asynchronous=False,
                )
            except Exception as error:  # a rebalance in progress: the next commit covers it
                LOG.warning("commit failed, covered by the next one: %s", error)
        if time.monotonic() >= next_chores:
            store.ship_due(args.ship_after_ms)
            reporter.send_owed()
            next_chores = time.monotonic() + 0.2
    LOG.info("stopping: leaving the group")
    consumer.close()
    reporter.send_owed(budget_s=5.0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
