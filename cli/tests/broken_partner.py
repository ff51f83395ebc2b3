#!/usr/bin/env python3
"""A partner adapter with one deliberate defect, for `waybill partner-check`'s tests
(cli/tests/partner_check.rs): the kit must fail it on exactly the scenarios its defect breaks.

Without a defect (`--defect none`) it keeps the contract of docs/partners.md in the plainest way:
one SQLite file (in $WAYBILL_CHECK_DIR) holds each order's shipment and the report it owes,
written in one transaction before the report is sent and the offset committed; reports go to
the order's reply-to with a fresh token (PyJWT, EdDSA) per attempt. The defects:

- not-idempotent: every delivery of an order creates a new shipment (a new tracking id);
- commit-first: commits the offset as soon as it reads a record, then reports from memory;
- ignore-reply-to: reports every order to the first reply-to address it ever read;
- loop-on-replay: retries a report refused as replayed at once, forever.

Settings come from the kit's environment (WAYBILL_PARTNER_ID, WAYBILL_KAFKA_BROKERS, ...).
"""

import argparse
import glob
import importlib
import logging
import os
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

LOG = logging.getLogger("broken-partner")
DEFECTS = ("none", "not-idempotent", "commit-first", "ignore-reply-to", "loop-on-replay")


def stubs(proto_dir):
    from grpc_tools import protoc
    import grpc_tools

    out = tempfile.mkdtemp(prefix="waybill-broken-stubs-")
    well_known = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    files = sorted(glob.glob(os.path.join(proto_dir, "waybill", "v1", "*.proto")))
    args = ["protoc", f"-I{proto_dir}", f"-I{well_known}", f"--python_out={out}"]
    if protoc.main(args + [f"--grpc_python_out={out}", *files]) != 0:
        sys.exit("protoc failed")
    sys.path.insert(0, out)
    names = ("common_pb2", "kafka_pb2", "status_ingest_pb2", "status_ingest_pb2_grpc")
    return [importlib.import_module(f"waybill.v1.{name}") for name in names]


class Adapter:
    def __init__(self, args):
        self.args = args
        self.defect = args.defect
        self.common, self.kafka, self.ingest, self.ingest_grpc = stubs(args.proto_dir)
        env = os.environ
        self.partner = env["WAYBILL_PARTNER_ID"]
        self.audience = env.get("WAYBILL_TOKEN_AUDIENCE", "waybill-local")
        self.key_id = env["WAYBILL_PARTNER_KEY_ID"]
        with open(env["WAYBILL_PARTNER_KEY_FILE"], "rb") as key:
            self.key = serialization.load_pem_private_key(key.read(), password=None)
        self.db = sqlite3.connect(
            os.path.join(env.get("WAYBILL_CHECK_DIR", "."), "broken.db"), isolation_level=None
        )
        self.db.executescript(
            "CREATE TABLE IF NOT EXISTS shipments (order_id TEXT PRIMARY KEY, tracking_id TEXT);"
            "CREATE TABLE IF NOT EXISTS reports (report_id TEXT PRIMARY KEY, order_id TEXT,"
            " status TEXT, tracking_id TEXT, detail TEXT, detail_code TEXT, occurred_ms INTEGER,"
            " reply_to TEXT, state TEXT, next_ms INTEGER);"
        )
        self.memory = {}  # commit-first: order id -> report, never stored
        self.fixed_reply_to = None  # ignore-reply-to
        self.channels = {}

    # --- records

    def order_of(self, msg):
        headers = {k: (v or b"").decode("utf-8", "replace") for k, v in (msg.headers() or [])}
        if headers.get("waybill-message-type") != "waybill.v1.DispatchedOrder":
            return None, None
        if headers.get("waybill-schema-version") != "1":
            return None, None
        order = self.kafka.DispatchedOrder()
        try:
            order.ParseFromString(msg.value() or b"")
        except Exception:
            return None, None
        if order.order_id != headers.get("waybill-correlation-id"):
            return None, None
        return order, headers["waybill-reply-to"]

    def answer(self, order, reply_to):
        if self.fixed_reply_to is None:
            self.fixed_reply_to = reply_to
        if self.defect == "ignore-reply-to":
            reply_to = self.fixed_reply_to
        oid = order.order_id
        if "[reject]" in order.ship_to.line2:
            report = (f"{oid}:REJECTED_BY_PARTNER", "REJECTED_BY_PARTNER", "", "no lane", "OUT_OF_AREA")
        else:
            row = self.db.execute(
                "SELECT tracking_id FROM shipments WHERE order_id = ?", (oid,)
            ).fetchone()
            if self.defect == "commit-first":
                row = (self.memory[oid][3],) if oid in self.memory else None
            if row is None or self.defect == "not-idempotent":
                row = ("BR" + secrets.token_hex(5).upper(),)
            report = (f"{oid}:RECEIVED_BY_PARTNER", "RECEIVED_BY_PARTNER", row[0], "", "")
        rid, status, tracking, detail, code = report
        now = int(time.time() * 1000)
        values = (rid, oid, status, tracking, detail, code, now, reply_to, now)
        if self.defect == "commit-first":
            self.memory.setdefault(oid, values)
            return
        self.db.execute("BEGIN IMMEDIATE")
        if tracking:
            self.db.execute("INSERT OR REPLACE INTO shipments VALUES (?, ?)", (oid, tracking))
        replace = "REPLACE" if self.defect == "not-idempotent" else "IGNORE"
        self.db.execute(
            f"INSERT OR {replace} INTO reports VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'owed', ?)", values
        )
        self.db.execute("COMMIT")

    # --- reports

    def owed(self):
        if self.defect == "commit-first":
            return [v for v in self.memory.values() if v[8] is not None and v[8] <= time.time() * 1000]
        return self.db.execute(
            "SELECT report_id, order_id, status, tracking_id, detail, detail_code, occurred_ms,"
            " reply_to, next_ms FROM reports WHERE state = 'owed' AND next_ms <= ?",
            (int(time.time() * 1000),),
        ).fetchall()

    def done(self, report, state, delay_s=0.0):
        rid, oid = report[0], report[1]
        next_ms = int(time.time() * 1000 + delay_s * 1000)
        if self.defect == "commit-first":
            self.memory[oid] = report[:8] + ((next_ms if state == "owed" else None),)
        else:
            self.db.execute(
                "UPDATE reports SET state = ?, next_ms = ? WHERE report_id = ?",
                (state, next_ms, rid),
            )

    def request(self, report):
        rid, oid, status, tracking, detail, code, ms, _ = report[:8]
        now = int(time.time())
        occurred = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}Z"
        claims = {
            "iss": self.partner, "sub": oid, "aud": self.audience, "iat": now, "exp": now + 120,
            "jti": str(uuid.uuid4()), "report_id": rid, "status": status, "tracking_id": tracking,
            "detail": detail, "detail_code": code, "action_required": False, "occurred_at": occurred,
        }
        token = jwt.encode(claims, self.key, algorithm="EdDSA",
                           headers={"kid": self.key_id, "typ": "wb-report+jwt"})
        request = self.ingest.ReportStatusRequest(
            correlation_id=oid, partner_id=self.partner, report_id=rid,
            status=self.common.OrderStatus.Value("ORDER_STATUS_" + status),
            tracking_id=tracking, detail=detail, detail_code=code, token=token,
        )
        request.occurred_at.seconds = ms // 1000
        request.occurred_at.nanos = (ms % 1000) * 1_000_000
        return request

    def send(self, report):
        target = urllib.parse.urlsplit(report[7])
        address = f"{target.hostname}:{target.port}"
        if address not in self.channels:
            self.channels[address] = self.ingest_grpc.StatusIngestStub(grpc.insecure_channel(address))
        for _ in range(50 if self.defect == "loop-on-replay" else 1):
            try:
                self.channels[address].ReportStatus(self.request(report), timeout=5)
                self.done(report, "accepted")
                return
            except grpc.RpcError as error:
                code, message = error.code(), error.details() or ""
                if "replayed" in message and self.defect == "loop-on-replay":
                    continue  # the defect: at once, again
                if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    self.done(report, "owed", 0.3)
                    return
                LOG.error("report %s refused for good: %s %s", report[0], code, message)
                self.done(report, "refused")
                return
        self.done(report, "owed", 0.0)

    def send_owed(self):
        for report in self.owed():
            self.send(report)

    # --- the loop

    def run(self):
        stopping = []
        signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
        consumer = Consumer({
            "bootstrap.servers": os.environ["WAYBILL_KAFKA_BROKERS"],
            "group.id": f"waybill-connector.{self.partner}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "session.timeout.ms": int(os.environ.get("WAYBILL_KAFKA_SESSION_TIMEOUT_MS", "6000")),
            "fetch.wait.max.ms": 10,
        })
        topic = os.environ.get("WAYBILL_TOPIC_PREFIX", "waybill.partner.") + self.partner
        consumer.subscribe([topic])
        while not stopping:
            msg = consumer.poll(0.05)
            if msg is not None and msg.error():
                if msg.error().code() != KafkaError._PARTITION_EOF:
                    LOG.warning("kafka: %s", msg.error())
                msg = None
            if msg is not None:
                position = [TopicPartition(msg.topic(), msg.partition(), msg.offset() + 1)]
                if self.defect == "commit-first":
                    consumer.commit(offsets=position, asynchronous=False)
                order, reply_to = self.order_of(msg)
                if order is not None:
                    self.answer(order, reply_to)
                self.send_owed()
                if self.defect != "commit-first":
                    consumer.commit(offsets=position, asynchronous=False)
            self.send_owed()
        consumer.close()


def main():
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    here = os.path.dirname(os.path.abspath(__file__))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--defect", choices=DEFECTS, default="none")
    parser.add_argument("--proto-dir", default=os.path.join(here, "..", "..", "proto"))
    Adapter(parser.parse_args()).run()


if __name__ == "__main__":
    main()
