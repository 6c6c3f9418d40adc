"""An independent MQTT 5 subscriber for the MQTT uplink tests (paho-mqtt, not rumqttc).

Connects over mutual TLS with its own client certificate, persistent session (Clean Start
off, a session expiry), subscribes at QoS 1, and for every message writes one JSON line:

    {"topic": ..., "content_type": ..., "schema": ..., "identifiers": [...],
     "times": [...], "valid": true|false, "error": ...}

`identifiers` and `times` are the Observations' identifier values and effectiveDateTime
(one for an Observation, several for a Bundle). `valid` says whether the payload parsed as
FHIR R4 JSON with fhir.resources 6.4.0 (the same independent models as validate_fhir.py).
Prints SUBSCRIBED once the broker granted the subscription (the test waits for it).

usage: stream_subscriber.py HOST PORT CA CERT KEY TOPIC_FILTER CLIENT_ID OUT_FILE
"""

import json
import sys
import threading

import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.packettypes import PacketTypes

import fhir.resources
from fhir.resources.bundle import Bundle
from fhir.resources.observation import Observation

IDENTIFIER_SYSTEM = "http://hl7.org/fhir/uv/phd/StructureDefinition/PhdBaseObservation"


def observations(doc):
    if doc.get("resourceType") == "Bundle":
        return [
            e.get("resource", {})
            for e in doc.get("entry", [])
            if e.get("resource", {}).get("resourceType") == "Observation"
        ]
    return [doc]


def main():
    host, port, ca, cert, key, topic, client_id, out_path = sys.argv[1:9]
    version = getattr(fhir.resources, "__fhir_version__", "?")
    if version != "4.0.1":
        sys.exit(f"fhir.resources models FHIR {version}, not R4 4.0.1")
    out = open(out_path, "a", buffering=1)
    lock = threading.Lock()

    def on_connect(client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            print(f"CONNECT FAILED {reason_code}", flush=True)
            return
        client.subscribe(topic, qos=1)

    def on_subscribe(client, userdata, mid, reason_codes, properties):
        if all(not rc.is_failure for rc in reason_codes):
            print("SUBSCRIBED", flush=True)
        else:
            print(f"SUBSCRIBE REFUSED {reason_codes}", flush=True)

    def on_message(client, userdata, msg):
        line = {"topic": msg.topic, "valid": False, "error": None}
        props = getattr(msg, "properties", None)
        line["content_type"] = getattr(props, "ContentType", None)
        line["schema"] = dict(getattr(props, "UserProperty", []) or []).get("schema")
        try:
            doc = json.loads(msg.payload)
            if doc.get("resourceType") == "Bundle":
                Bundle.parse_obj(doc)
            else:
                Observation.parse_obj(doc)
            obs = observations(doc)
            line["identifiers"] = [
                i["value"]
                for o in obs
                for i in o.get("identifier", [])
                if i.get("system") == IDENTIFIER_SYSTEM
            ]
            line["times"] = [o.get("effectiveDateTime") for o in obs]
            line["valid"] = True
        except Exception as e:  # noqa: BLE001 - every failure is reported, not raised
            line["error"] = str(e)[:500]
        with lock:
            out.write(json.dumps(line) + "\n")

    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv5,
    )
    client.tls_set(ca_certs=ca, certfile=cert, keyfile=key)
    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    client.reconnect_delay_set(min_delay=1, max_delay=2)
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600
    client.connect(host, int(port), keepalive=10, clean_start=False, properties=props)
    client.loop_forever(retry_first_connection=True)


if __name__ == "__main__":
    main()
