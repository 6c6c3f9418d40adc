"""An independent Kafka consumer for the Kafka uplink tests (kafka-python, not rskafka).

Reads every partition of TOPIC from the beginning until no record has come for IDLE
seconds, and writes one JSON line per record, in offset order per partition:

    {"partition": p, "offset": o, "key": ..., "expected_partition": ...,
     "identifier": ..., "time": ..., "epoch": ..., "content_type": ..., "valid": true|false,
     "error": ...}

`expected_partition` is where kafka-python's own default partitioner (murmur2, as the Java
client) puts the key; `valid` says whether the value parsed as a FHIR R4 Observation with
fhir.resources 6.4.0.

usage: kafka_consumer.py BOOTSTRAP TOPIC IDLE_SECONDS OUT_FILE [CA CERT KEY]

With CA, CERT and KEY it connects with TLS and that client certificate. With
KAFKA_SASL_MECHANISM (SCRAM-SHA-256 or SCRAM-SHA-512), KAFKA_SASL_USERNAME and
KAFKA_SASL_PASSWORD in the environment it logs in with SASL/SCRAM (inside the TLS, if any).
"""

import datetime
import json
import os
import sys

import fhir.resources
from fhir.resources.observation import Observation
from kafka import KafkaConsumer, TopicPartition
from kafka.partitioner.default import murmur2

IDENTIFIER_SYSTEM = "http://hl7.org/fhir/uv/phd/StructureDefinition/PhdBaseObservation"


def main():
    bootstrap, topic, idle, out_path = sys.argv[1:5]
    tls = {}
    if len(sys.argv) >= 8:
        ca, cert, key = sys.argv[5:8]
        tls = dict(
            security_protocol="SSL",
            ssl_cafile=ca,
            ssl_certfile=cert,
            ssl_keyfile=key,
            ssl_check_hostname=True,
        )
    mechanism = os.environ.get("KAFKA_SASL_MECHANISM")
    if mechanism:
        tls.update(
            security_protocol="SASL_SSL" if tls else "SASL_PLAINTEXT",
            sasl_mechanism=mechanism,
            sasl_plain_username=os.environ["KAFKA_SASL_USERNAME"],
            sasl_plain_password=os.environ["KAFKA_SASL_PASSWORD"],
        )
    version = getattr(fhir.resources, "__fhir_version__", "?")
    if version != "4.0.1":
        sys.exit(f"fhir.resources models FHIR {version}, not R4 4.0.1")
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        consumer_timeout_ms=int(float(idle) * 1000),
        **tls,
    )
    partitions = sorted(consumer.partitions_for_topic(topic) or [])
    if not partitions:
        sys.exit(f"topic {topic} has no partitions")
    assigned = [TopicPartition(topic, p) for p in partitions]
    consumer.assign(assigned)
    consumer.seek_to_beginning(*assigned)
    with open(out_path, "w") as out:
        for m in consumer:
            line = {
                "partition": m.partition,
                "offset": m.offset,
                "key": m.key.decode() if m.key is not None else None,
                "expected_partition": (murmur2(m.key) & 0x7FFFFFFF) % len(partitions)
                if m.key is not None
                else None,
                "content_type": dict(m.headers or []).get("content-type", b"").decode(),
                "valid": False,
                "error": None,
            }
            try:
                doc = json.loads(m.value)
                Observation.parse_obj(doc)
                line["identifier"] = next(
                    i["value"]
                    for i in doc.get("identifier", [])
                    if i.get("system") == IDENTIFIER_SYSTEM
                )
                line["time"] = doc["effectiveDateTime"]
                line["epoch"] = datetime.datetime.fromisoformat(
                    doc["effectiveDateTime"].replace("Z", "+00:00")
                ).timestamp()
                line["valid"] = True
            except Exception as e:  # noqa: BLE001 - every failure is reported, not raised
                line["error"] = str(e)[:500]
            out.write(json.dumps(line) + "\n")


if __name__ == "__main__":
    main()
