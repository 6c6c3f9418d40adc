#!/usr/bin/env python3
"""An MLLP receiver standing in for an interface engine, for the HL7 uplink tests.

Every message is parsed with an independent HL7 v2 parser (the `hl7` package from PyPI),
then answered as the rules file says. Each message received is appended to
<out>/received.ndjson, and each one answered AA to <out>/accepted.ndjson, as one JSON object:

    {"control_id": "...", "answer": "AA", "pid3": "...", "pv1_3": "...",
     "obx": [{"code": "150456", "ref": "MDC_PULS_OXIM_SAT_O2", "system": "MDC",
              "sub_id": "1.2.1.1", "value": "97", "unit_code": "262688",
              "unit_ref": "MDC_DIM_PERCENT", "unit_system": "MDC", "status": "F",
              "time": "20260105101500+0100", "device": "0012211839000001"}]}

The rules file (JSON, read again for every message, so a test can change it mid-run):

    {"ae_values": ["55"],        # AE for a message with an OBX-5 among these
     "ar_first": 3,               # AR for the first attempt of every 3rd distinct message
     "silent_first": 5,           # no answer (close the connection) for the first attempt
                                  # of every 5th distinct message
     "tls": false}                # (read once at start) serve TLS with --cert/--key[/--ca]

Usage: mllp_receiver.py --port N --out DIR --rules FILE [--cert C --key K [--ca CA]]
Stops on SIGTERM/SIGKILL; binds 127.0.0.1 only.
"""

import argparse
import json
import os
import socket
import socketserver
import ssl
import sys
import threading

import hl7

START, END, CR = b"\x0b", b"\x1c", b"\x0d"

lock = threading.Lock()
seen = {}  # control id -> attempts


def field(segment, n):
    try:
        return str(segment[n])
    except (IndexError, KeyError):
        return ""


def component(segment, n, c):
    try:
        return str(segment[n][0][c - 1])
    except (IndexError, KeyError, TypeError):
        return ""


def parse(text):
    message = hl7.parse(text)
    msh = message.segment("MSH")
    record = {
        "control_id": field(msh, 10),
        "type": field(msh, 9),
        "version": field(msh, 12),
        "pid3": "",
        "pv1_3": "",
        "obx": [],
    }
    for seg in message:
        name = str(seg[0])
        if name == "PID":
            record["pid3"] = field(seg, 3)
        elif name == "PV1":
            record["pv1_3"] = field(seg, 3)
        elif name == "OBX":
            record["obx"].append(
                {
                    "code": component(seg, 3, 1),
                    "ref": component(seg, 3, 2),
                    "system": component(seg, 3, 3),
                    "sub_id": field(seg, 4),
                    "value": field(seg, 5),
                    "unit_code": component(seg, 6, 1),
                    "unit_ref": component(seg, 6, 2),
                    "unit_system": component(seg, 6, 3),
                    "status": field(seg, 11),
                    "time": field(seg, 14),
                    "device": component(seg, 18, 1),
                }
            )
    return record


def ack(record, code, text=""):
    msa = f"MSA|{code}|{record['control_id']}"
    err = ""
    if code != "AA":
        msa += f"|{text}"
        err = f"\rERR|||207^{text}^HL70357|E"
    return (
        f"MSH|^~\\&|ENGINE|HOSP|VITALBRIDGE||20260105101500+0000||ACK^R01^ACK|A{record['control_id']}|P|2.6\r"
        f"{msa}{err}\r"
    ).encode()


class Handler(socketserver.BaseRequestHandler):
    def handle(self):
        buf = b""
        while True:
            try:
                chunk = self.request.recv(65536)
            except OSError:
                return
            if not chunk:
                return
            buf += chunk
            while True:
                start = buf.find(START)
                end = buf.find(END + CR, start + 1)
                if start < 0 or end < 0:
                    break
                frame = buf[start + 1 : end]
                buf = buf[end + 2 :]
                if not self.answer(frame):
                    try:
                        self.request.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                    return

    def answer(self, frame):
        server = self.server
        with open(server.rules_path) as f:
            rules = json.load(f)
        text = frame.decode("utf-8").replace("\n", "\r")
        try:
            record = parse(text)
        except Exception as e:  # an unparsable message is a test failure: record it
            record = {"control_id": "", "error": repr(e), "obx": []}
            append(server.out, "received.ndjson", record)
            self.request.sendall(START + ack(record, "AR", "unparsable") + END + CR)
            return True
        with lock:
            attempts = seen.get(record["control_id"], 0) + 1
            seen[record["control_id"]] = attempts
            index = len(seen)
        answer = "AA"
        values = {o["value"] for o in record["obx"]}
        if values & set(rules.get("ae_values", [])):
            answer = "AE"
        elif attempts == 1 and rules.get("silent_first") and index % rules["silent_first"] == 0:
            answer = "none"
        elif attempts == 1 and rules.get("ar_first") and index % rules["ar_first"] == 0:
            answer = "AR"
        record["answer"] = answer
        append(server.out, "received.ndjson", record)
        if answer == "none":
            return False
        if answer == "AA":
            append(server.out, "accepted.ndjson", record)
        reason = {"AE": "value refused by the engine", "AR": "engine busy"}.get(answer, "")
        self.request.sendall(START + ack(record, answer, reason) + END + CR)
        return True


def append(out, name, record):
    with lock:
        with open(os.path.join(out, name), "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())


class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--rules", required=True)
    p.add_argument("--cert")
    p.add_argument("--key")
    p.add_argument("--ca")
    a = p.parse_args()
    server = Server(("127.0.0.1", a.port), Handler)
    server.out = a.out
    server.rules_path = a.rules
    if a.cert:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(a.cert, a.key)
        if a.ca:
            ctx.load_verify_locations(a.ca)
            ctx.verify_mode = ssl.CERT_REQUIRED
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
    print("listening", flush=True)
    sys.stdout.close()
    server.serve_forever()


if __name__ == "__main__":
    main()
