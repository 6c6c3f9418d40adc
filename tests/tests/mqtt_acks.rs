//! The MQTT source's acknowledgements as a broker sees them on the wire: a scripted broker
//! (a TCP listener speaking MQTT 3.1.1 through rumqttc's packet codec) sends bursts of QoS 1
//! publishes to the real gateway binary and records every packet it gets back.
//!
//! The gateway writes the PUBACKs of a committed group together (gateway/src/ingest/mqtt/
//! pubacks.rs): these tests hold it to MQTT's rules while it does — each publish acknowledged
//! once, in the order it came (MQTT 3.1.1 §4.6) — and to the project's: every acknowledged
//! reading is delivered, once. And a clean stop must end the connection so that the broker
//! reads those PUBACKs: with a DISCONNECT and a FIN, not a reset.

use std::time::Duration;

use bytes::BytesMut;
use rumqttc::mqttbytes::v4::{ConnAck, ConnectReturnCode, Packet, Publish, SubAck};
use rumqttc::mqttbytes::QoS;
use rumqttc::SubscribeReasonCode;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use vitalbridge_tests::fixture::{self, Rig};
use vitalbridge_tests::gateway::GatewayProcess;
use vitalbridge_tests::scenario::{self, Expected};

const MAX_PACKET: usize = 1 << 20;

/// One accepted connection of the scripted broker.
struct Connection {
    stream: TcpStream,
    read: BytesMut,
    /// PUBACKs the gateway sent before subscribing (they can only belong to an earlier
    /// connection's publishes).
    before_subscribe: Vec<u16>,
}

impl Connection {
    /// Accepts the gateway's connection and completes CONNECT / CONNACK and SUBSCRIBE /
    /// SUBACK (granted at QoS 1).
    async fn accept(listener: &TcpListener) -> Connection {
        let (stream, _) = tokio::time::timeout(Duration::from_secs(30), listener.accept())
            .await
            .expect("the gateway connects")
            .expect("accept");
        let mut c = Connection {
            stream,
            read: BytesMut::new(),
            before_subscribe: Vec::new(),
        };
        assert!(matches!(c.next().await, Packet::Connect(..)));
        c.send(&[Packet::ConnAck(ConnAck::new(
            ConnectReturnCode::Success,
            false,
        ))])
        .await;
        let subscribe = loop {
            match c.next().await {
                Packet::Subscribe(subscribe) => break subscribe,
                Packet::PubAck(ack) => c.before_subscribe.push(ack.pkid),
                other => panic!("expected SUBSCRIBE, got {other:?}"),
            }
        };
        let granted = vec![SubscribeReasonCode::Success(QoS::AtLeastOnce); subscribe.filters.len()];
        c.send(&[Packet::SubAck(SubAck::new(subscribe.pkid, granted))])
            .await;
        c
    }

    /// The next packet from the gateway.
    async fn next(&mut self) -> Packet {
        read_packet(&mut self.stream, &mut self.read)
            .await
            .expect("read from the gateway")
            .expect("the gateway closed the connection")
    }

    /// Writes `packets` in one write.
    async fn send(&mut self, packets: &[Packet]) {
        let mut out = BytesMut::new();
        for p in packets {
            p.write(&mut out, MAX_PACKET).expect("encode");
        }
        self.stream.write_all(&out).await.expect("write");
    }

    /// The packet ids of the next `n` PUBACKs (PINGREQs are answered; anything else fails).
    async fn pubacks(&mut self, n: usize) -> Vec<u16> {
        let mut acked = Vec::with_capacity(n);
        while acked.len() < n {
            match self.next().await {
                Packet::PubAck(ack) => acked.push(ack.pkid),
                Packet::PingReq => self.send(&[Packet::PingResp]).await,
                other => panic!("expected PUBACK, got {other:?}"),
            }
        }
        acked
    }
}

/// The next packet from the gateway on `stream` (`read` keeps what is read past it), or
/// `None` when the gateway has closed the connection.
async fn read_packet(
    stream: &mut (impl AsyncRead + Unpin),
    read: &mut BytesMut,
) -> std::io::Result<Option<Packet>> {
    loop {
        match Packet::read(read, MAX_PACKET) {
            Ok(packet) => return Ok(Some(packet)),
            Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => {}
            Err(e) => panic!("the gateway sent a malformed packet: {e:?}"),
        }
        if stream.read_buf(read).await? == 0 {
            return Ok(None);
        }
    }
}

/// QoS 1 publishes of readings `range`, with packet ids from `first_pkid`.
fn publishes(range: std::ops::Range<u64>, first_pkid: u16) -> (Vec<Packet>, Vec<Expected>) {
    range
        .enumerate()
        .map(|(k, i)| {
            let (payload, expected) = scenario::reading(i, 10);
            let mut publish = Publish::new("vitals/wire", QoS::AtLeastOnce, payload);
            publish.pkid = first_pkid + k as u16;
            (Packet::Publish(publish), expected)
        })
        .unzip()
}

/// The gateway, subscribed to the scripted broker on `listener`, delivering to the rig's
/// upstream.
fn gateway(rig: &Rig, listener: &TcpListener) -> GatewayProcess {
    let port = listener.local_addr().unwrap().port();
    let config = scenario::mqtt_to_fhir(&rig.data_dir(), port, &rig.upstream.url(), &rig.pki, "");
    rig.start_gateway(&config)
}

/// Waits until the rig's upstream has every reading of `expected` (60 s at most), and checks
/// each arrived once, with its value, unit and code.
async fn assert_delivered_once(rig: &Rig, gw: &GatewayProcess, expected: &[Expected]) {
    assert!(
        rig.upstream
            .wait_for_observations(expected.len(), Duration::from_secs(60))
            .await,
        "only {} of {} delivered\n{}",
        rig.upstream.observation_count(),
        expected.len(),
        fixture::tail(&gw.log(), 40)
    );
    rig.upstream.assert_no_duplicate_identifiers();
    let problems = scenario::compare(&rig.upstream.observations(), expected);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bursts_of_publishes_are_each_acknowledged_once_in_the_order_they_came() {
    let rig = Rig::start().await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gw = gateway(&rig, &listener);
    let mut broker = Connection::accept(&listener).await;

    // Bursts of several sizes: one publish alone, groups the writer commits together, and a
    // burst larger than the source takes at once (MAX_MESSAGES_IN_PROGRESS, 512).
    let mut expected = Vec::new();
    let mut next = 0u64;
    let mut pkid = 1u16;
    for burst in [1usize, 7, 64, 300, 1000, 3] {
        let (packets, readings) = publishes(next..next + burst as u64, pkid);
        broker.send(&packets).await;
        let acked = tokio::time::timeout(Duration::from_secs(60), broker.pubacks(burst))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "a burst of {burst} was not acknowledged within 60 s\n{}",
                    fixture::tail(&gw.log(), 40)
                )
            });
        let sent: Vec<u16> = (pkid..pkid + burst as u16).collect();
        assert_eq!(
            acked, sent,
            "each publish acknowledged once, in the order it came (burst of {burst})"
        );
        expected.extend(readings);
        next += burst as u64;
        pkid += burst as u16;
    }

    // Nothing more: no PUBACK twice, none for a packet id never sent.
    let extra = tokio::time::timeout(Duration::from_millis(500), broker.next()).await;
    assert!(
        !matches!(extra, Ok(Packet::PubAck(_))),
        "an extra PUBACK: {extra:?}"
    );

    // Every acknowledged reading is delivered, once.
    assert_delivered_once(&rig, &gw, &expected).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_lost_connection_the_publishes_sent_again_are_acknowledged_on_the_new_one() {
    let rig = Rig::start().await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gw = gateway(&rig, &listener);

    // The first connection gets a burst and is dropped at once, before (most of) its
    // acknowledgements can be read.
    let (packets, expected) = publishes(0..200, 1);
    let mut first = Connection::accept(&listener).await;
    first.send(&packets).await;
    drop(first);

    // As a broker keeping a persistent session would, the second sends them all again (DUP),
    // then a few new ones: each is acknowledged once on it, in order.
    let mut second = Connection::accept(&listener).await;
    assert_eq!(
        second.before_subscribe,
        [] as [u16; 0],
        "PUBACKs of the lost connection went out on the new one"
    );
    let again: Vec<Packet> = packets
        .iter()
        .cloned()
        .map(|p| match p {
            Packet::Publish(mut publish) => {
                publish.dup = true;
                Packet::Publish(publish)
            }
            other => other,
        })
        .collect();
    second.send(&again).await;
    let (more, more_expected) = publishes(200..210, 201);
    second.send(&more).await;
    let acked = tokio::time::timeout(Duration::from_secs(60), second.pubacks(210))
        .await
        .unwrap_or_else(|_| {
            panic!(
                "not acknowledged within 60 s\n{}",
                fixture::tail(&gw.log(), 40)
            )
        });
    assert_eq!(
        acked,
        (1..=210).collect::<Vec<u16>>(),
        "each publish acknowledged once on the new connection, in the order it came there"
    );
    let extra = tokio::time::timeout(Duration::from_millis(500), second.next()).await;
    assert!(
        !matches!(extra, Ok(Packet::PubAck(_))),
        "a PUBACK of the lost connection went out on the new one: {extra:?}"
    );

    let expected: Vec<Expected> = expected.into_iter().chain(more_expected).collect();
    assert_delivered_once(&rig, &gw, &expected).await;
}

/// A broker may drop the bytes it has not read yet when a connection is reset (mosquitto
/// does): the PUBACKs the gateway wrote last at a stop would be lost, and their messages,
/// stored, sent again. A socket closed with unread bytes is reset, and the broker keeps
/// sending until it reads the DISCONNECT, so the gateway must read on until the broker
/// closes. Here the broker sends publishes without pause until the DISCONNECT, then closes
/// its side, and must see the gateway close its own cleanly (FIN), not reset it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_stop_ends_the_connection_without_a_reset() {
    let rig = Rig::start().await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut gw = gateway(&rig, &listener);
    let Connection {
        stream, mut read, ..
    } = Connection::accept(&listener).await;
    let (mut from_gateway, mut to_gateway) = stream.into_split();

    // Publishes without pause, in chunks of 50, until told to stop; then the broker's FIN.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let pump = tokio::spawn({
        let stop = stop.clone();
        async move {
            let mut next = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let mut out = BytesMut::new();
                for _ in 0..50 {
                    let (payload, _) = scenario::reading(next, 10);
                    let mut publish = Publish::new("vitals/wire", QoS::AtLeastOnce, payload);
                    publish.pkid = (next % 65_535) as u16 + 1;
                    Packet::Publish(publish)
                        .write(&mut out, MAX_PACKET)
                        .unwrap();
                    next += 1;
                }
                if to_gateway.write_all(&out).await.is_err() {
                    return next;
                }
            }
            to_gateway.shutdown().await.expect("the broker's FIN");
            next
        }
    });

    // Stop the gateway once it has acknowledged some, while the publishes keep coming.
    let mut acked = 0;
    while acked < 500 {
        match read_packet(&mut from_gateway, &mut read).await {
            Ok(Some(Packet::PubAck(_))) => acked += 1,
            Ok(Some(_)) => {}
            other => panic!("the connection ended early: {other:?}"),
        }
    }
    let stopping = tokio::task::spawn_blocking(move || {
        let status = gw.terminate(Duration::from_secs(30));
        (gw, status)
    });
    let disconnect = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match read_packet(&mut from_gateway, &mut read).await {
                Ok(Some(Packet::Disconnect)) => return Ok(()),
                Ok(Some(_)) => {}
                other => return Err(format!("{other:?}")),
            }
        }
    })
    .await
    .expect("a DISCONNECT within 30 s");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent = pump.await.unwrap();
    let (gw, status) = stopping.await.unwrap();
    assert_eq!(
        disconnect,
        Ok(()),
        "the gateway ended the connection without a DISCONNECT\n{}",
        fixture::tail(&gw.log(), 40)
    );
    // What follows the DISCONNECT: nothing, then the gateway's FIN.
    let end = tokio::time::timeout(
        Duration::from_secs(10),
        read_packet(&mut from_gateway, &mut read),
    )
    .await
    .expect("the gateway closes the connection");
    assert!(
        matches!(end, Ok(None)),
        "after its DISCONNECT the gateway sent {end:?} (a reset is what a broker may drop the \
         last PUBACKs on); {sent} publishes sent"
    );
    assert!(status.is_some_and(|s| s.success()), "{}", gw.log());
}
