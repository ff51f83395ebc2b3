"""A partner's own service behind `waybill sidecar`, in Python (grpcio), written from
proto/waybill/v1/partner_adapter.proto alone: it implements waybill.v1.PartnerAdapter,
reports each accepted order SHIPPED through the sidecar's waybill.v1.PartnerReports, and
schedules DELIVERED with its answer (Accepted.later).

Its "shipment system" is a SQLite file: one shipment per idempotency key, created at most once
(a second call for the same key answers the stored tracking id), and every call logged, so a
test can tell a redelivery answered from the sidecar's inbox (no call) from a second call
(two calls, one shipment). SHIPPED is owed durably: a row in `owed` until the sidecar said it
stored the report, so a crash of either side re-sends it (same report id: stored once).

Orders whose address line 2 holds "[reject]" are rejected (NO_CAPACITY).

Usage: sidecar_adapter.py PROTO_DIR DB_PATH LISTEN_PORT SIDECAR_ADDR
"""

import os
import sqlite3
import sys
import tempfile
import threading
import time
import uuid
from concurrent import futures

import grpc
from google.protobuf import duration_pb2
from grpc_tools import protoc

try:
    from importlib.resources import files as _files

    _WELL_KNOWN = str(_files("grpc_tools") / "_proto")
except Exception:  # pragma: no cover - older Pythons
    import pkg_resources

    _WELL_KNOWN = pkg_resources.resource_filename("grpc_tools", "_proto")


def stubs(proto_dir):
    """Generates the Python stubs of proto/ into a temporary directory and imports them."""
    out = tempfile.mkdtemp(prefix="waybill-stubs-")
    sources = [
        os.path.join("waybill", "v1", name)
        for name in ("common.proto", "kafka.proto", "partner_adapter.proto")
    ]
    code = protoc.main(
        ["protoc", f"-I{proto_dir}", f"-I{_WELL_KNOWN}", f"--python_out={out}", f"--grpc_python_out={out}"]
        + sources
    )
    if code != 0:
        raise SystemExit(f"protoc failed ({code})")
    sys.path.insert(0, out)
    from waybill.v1 import common_pb2, partner_adapter_pb2, partner_adapter_pb2_grpc

    return common_pb2, partner_adapter_pb2, partner_adapter_pb2_grpc


def open_db(path):
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(
        "CREATE TABLE IF NOT EXISTS shipments (order_id TEXT PRIMARY KEY, tracking_id TEXT NOT NULL UNIQUE)"
    )
    db.execute("CREATE TABLE IF NOT EXISTS calls (order_id TEXT NOT NULL, attempt INTEGER NOT NULL)")
    db.execute("CREATE TABLE IF NOT EXISTS owed (order_id TEXT PRIMARY KEY)")
    return db


def main():
    proto_dir, db_path, port, sidecar = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
    common_pb2, pb, pb_grpc = stubs(proto_dir)
    db = open_db(db_path)
    lock = threading.Lock()
    wake = threading.Event()

    class Adapter(pb_grpc.PartnerAdapterServicer):
        def RequestShipment(self, request, context):
            key = request.idempotency_key
            with lock:
                db.execute("INSERT INTO calls VALUES (?, ?)", (key, request.attempt))
                if "[reject]" in request.order.ship_to.line2:
                    return pb.ShipmentAnswer(
                        rejected=pb.Rejected(reason="no capacity on that lane", detail_code="NO_CAPACITY")
                    )
                # One shipment per idempotency key, and the report it owes, in one transaction.
                db.execute("BEGIN IMMEDIATE")
                row = db.execute("SELECT tracking_id FROM shipments WHERE order_id = ?", (key,)).fetchone()
                if row is None:
                    tracking_id = "PY-" + uuid.uuid4().hex[:16].upper()
                    db.execute("INSERT INTO shipments VALUES (?, ?)", (key, tracking_id))
                    db.execute("INSERT OR IGNORE INTO owed VALUES (?)", (key,))
                else:
                    tracking_id = row[0]
                db.execute("COMMIT")
            wake.set()
            # DELIVERED is known now to come 2 s later: scheduled with the answer, stored by the
            # sidecar in the same transaction (SHIPPED goes through PartnerReports below).
            delivered = pb.ScheduledStatus(
                status=pb.LaterStatus(status=common_pb2.ORDER_STATUS_DELIVERED),
                after=duration_pb2.Duration(seconds=2),
            )
            return pb.ShipmentAnswer(accepted=pb.Accepted(tracking_id=tracking_id, later=[delivered]))

    def report_owed():
        """Reports SHIPPED for every owed order until the sidecar stored it."""
        channel = grpc.insecure_channel(sidecar)
        reports = pb_grpc.PartnerReportsStub(channel)
        while True:
            wake.wait(0.2)
            wake.clear()
            with lock:
                owed = [row[0] for row in db.execute("SELECT order_id FROM owed LIMIT 100")]
            for order_id in owed:
                try:
                    reports.Report(
                        pb.LaterStatus(
                            order_id=order_id,
                            status=common_pb2.ORDER_STATUS_SHIPPED,
                            report_id=f"{order_id}:shipped",
                        ),
                        timeout=70,
                    )
                except grpc.RpcError as error:
                    # UNAVAILABLE (sidecar restarting) or NOT_FOUND (its answer not stored
                    # yet): try again on the next round; never drop what is owed.
                    print(f"report {order_id}: {error.code()} {error.details()}", file=sys.stderr, flush=True)
                    time.sleep(0.2)
                    continue
                with lock:
                    db.execute("DELETE FROM owed WHERE order_id = ?", (order_id,))

    threading.Thread(target=report_owed, daemon=True).start()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    pb_grpc.add_PartnerAdapterServicer_to_server(Adapter(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    print("adapter ready", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
