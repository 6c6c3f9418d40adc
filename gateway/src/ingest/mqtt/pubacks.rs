//! PUBACKs written together, in the order their publishes came, on the connection they came on.
//!
//! rumqttc writes and flushes every acknowledgement queued with `AsyncClient::ack` on its own:
//! one `writev` per message, about 9 % of the gateway's CPU at full speed (docs/benchmark.md).
//! Here only the first PUBACK of a run goes through rumqttc's request channel — the *wake*: it
//! is what makes `EventLoop::poll` hand control back to the poll task while it waits on the
//! network. When rumqttc reports the wake written (`Outgoing::PubAck`), the poll task writes
//! every PUBACK queued behind it straight to the connection (`EventLoop::network`) and flushes
//! once: two writes per committed group instead of one per message.
//!
//! # Invariants
//! - **Arrival order** (MQTT 3.1.1 §4.6, "PUBACK packets in the order in which the
//!   corresponding PUBLISH packets were received"): the queue is kept in that order, the wake is
//!   its head, and what is behind the wake is written only once the wake has been.
//! - **One wake at a time**: while one is outstanding, new PUBACKs join the queue behind it; the
//!   first PUBACK queued after the wake's report is the next wake.
//! - **Only on the connection the publish came on**: a connection lost drops the queue and the
//!   wake (rumqttc drops the PUBACKs in its channel then too), and a PUBACK of an earlier
//!   connection is never queued. Which connection a publish came on is [`Connections`]'s
//!   to say: rumqttc hands out the packets it had read before a loss after the next CONNACK.
//!   A wake is handed to rumqttc while the queue is locked, and a loss empties rumqttc's
//!   channel under the same lock, so no wake of a lost connection goes out on the next. The
//!   broker sends every unacknowledged publish of a persistent session again after the
//!   reconnect, where it is stored again as a no-op and acknowledged; a PUBACK written on a
//!   later connection could instead acknowledge another message that reuses its packet id
//!   before that message is stored.
//! - Only publishes whose readings or dead letters are durable are ever queued (the commit
//!   task hands them over after the commit), so any PUBACK written is one the broker may have.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rumqttc::{ConnectionError, EventLoop, Packet, PubAck, PubRec, QoS};

/// What a PUBACK needs: a publish whose readings are durable, without its payload, so a
/// backlog of acks waiting for the event loop costs a few bytes each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct AckId {
    /// The publish's QoS: 1 is answered with a PUBACK, 2 with a PUBREC (the source subscribes
    /// at QoS 1, so a broker sends no QoS 2), 0 with nothing.
    pub qos: QoS,
    /// The publish's packet id.
    pub pkid: u16,
    /// The connection it came on ([`PubAcks::connection`]).
    pub connection: u64,
}

impl AckId {
    /// The packet that acknowledges it; `None` for QoS 0.
    fn packet(&self) -> Option<Packet> {
        match self.qos {
            QoS::AtMostOnce => None,
            QoS::AtLeastOnce => Some(Packet::PubAck(PubAck::new(self.pkid))),
            QoS::ExactlyOnce => Some(Packet::PubRec(PubRec::new(self.pkid))),
        }
    }
}

/// The queue of PUBACKs between the ack task, which queues them once durable, and the poll
/// task, which writes them. Cloned handles share one queue.
#[derive(Clone, Default)]
pub(super) struct PubAcks(Arc<Mutex<Queue>>);

#[derive(Default)]
struct Queue {
    /// The connection publishes come on now: raised when one is lost.
    connection: u64,
    /// PUBACKs behind the wake, in arrival order.
    behind: VecDeque<AckId>,
    /// The packet id of the wake in rumqttc's channel, whose report the queue waits for.
    wake: Option<u16>,
}

impl PubAcks {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // The queue holds plain values, consistent after any panic elsewhere.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The connection publishes come on now; a message records it with its [`AckId`].
    pub fn connection(&self) -> u64 {
        self.lock().connection
    }

    /// The connection is lost: `clean` empties rumqttc's channel of PUBACKs (the wake among
    /// them) while the queue is locked, so no wake [`push`](Self::push) sends can be left in
    /// it for the next connection; the queue and the wake go, and PUBACKs of publishes
    /// received so far are no longer queued. Returns the next connection's number.
    pub fn lost(&self, clean: impl FnOnce()) -> u64 {
        let mut q = self.lock();
        clean();
        q.connection += 1;
        q.behind.clear();
        q.wake = None;
        q.connection
    }

    /// Queues the PUBACKs of durable publishes, in the order they came. When no wake is
    /// outstanding the head of the queue becomes one and goes to `send` (rumqttc's
    /// `try_ack`) while the queue is locked (see [`lost`](Self::lost)). Returns the wake if
    /// `send` could not take it (rumqttc's channel full: the caller waits for room).
    #[must_use]
    pub fn push(
        &self,
        acks: impl IntoIterator<Item = AckId>,
        send: impl FnOnce(AckId) -> bool,
    ) -> Option<AckId> {
        let mut q = self.lock();
        let now = q.connection;
        q.behind.extend(
            acks.into_iter()
                .filter(|a| a.connection == now && a.qos != QoS::AtMostOnce),
        );
        if q.wake.is_some() {
            return None;
        }
        let wake = q.behind.pop_front()?;
        q.wake = Some(wake.pkid);
        (!send(wake)).then_some(wake)
    }

    /// rumqttc has written the acknowledgement of `pkid`: if it was the wake, takes what is
    /// queued behind it, to be written now and before anything rumqttc writes next.
    fn written(&self, pkid: u16) -> Vec<AckId> {
        let mut q = self.lock();
        if q.wake != Some(pkid) {
            return Vec::new();
        }
        q.wake = None;
        q.behind.drain(..).collect()
    }

    /// No wake is outstanding: everything queued has been written (or dropped with its
    /// connection).
    pub fn idle(&self) -> bool {
        self.lock().wake.is_none()
    }

    /// Called by the poll task for each acknowledgement rumqttc reports written: writes the
    /// PUBACKs queued behind it, if it was the wake, and flushes once. On failure the event
    /// loop's connection is dropped (`EventLoop::clean`, as rumqttc does on its own errors)
    /// and the error is returned like one of `poll`'s.
    pub async fn write_behind(
        &self,
        pkid: u16,
        eventloop: &mut EventLoop,
    ) -> Result<(), ConnectionError> {
        let acks = self.written(pkid);
        if acks.is_empty() {
            return Ok(());
        }
        let timeout = Duration::from_secs(eventloop.network_options().connection_timeout());
        // rumqttc has just written the wake on this connection, so it is there.
        let Some(network) = eventloop.network.as_mut() else {
            return Ok(());
        };
        let write = async {
            for packet in acks.iter().filter_map(AckId::packet) {
                network.write(packet).await?;
            }
            network.flush().await
        };
        let failure = match tokio::time::timeout(timeout, write).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => ConnectionError::MqttState(e),
            Err(_) => ConnectionError::FlushTimeout,
        };
        eventloop.clean();
        Err(failure)
    }
}

/// Which connection each event rumqttc hands out came on. rumqttc keeps the packets it had
/// read when a connection was lost (`MqttState::events` outlives the connection) and hands
/// them out after the next CONNACK: a publish among them came on the lost connection, so it
/// is stored but its PUBACK is not written (the broker sends it again on the new one, where
/// it is stored as a no-op and acknowledged).
pub(super) struct Connections {
    pubacks: PubAcks,
    /// The connection publishes come on now.
    current: u64,
    /// Events of a lost connection still to be handed out.
    leftover: usize,
}

impl Connections {
    pub fn new(pubacks: PubAcks) -> Self {
        let current = pubacks.connection();
        Self {
            pubacks,
            current,
            leftover: 0,
        }
    }

    /// `EventLoop::poll` failed: rumqttc has dropped the connection and emptied its channel of
    /// PUBACKs; it is emptied once more under the queue's lock ([`PubAcks::lost`]: a second
    /// `EventLoop::clean` finds nothing else to do).
    pub fn lost(&mut self, eventloop: &mut EventLoop) {
        self.current = self.pubacks.lost(|| eventloop.clean());
        self.leftover = eventloop.state.events.len();
    }

    /// The connection the event `poll` just returned came on. `connecting`: that poll made a
    /// new connection (the event is its CONNACK, not one of the events kept).
    pub fn came_on(&mut self, connecting: bool) -> u64 {
        if connecting || self.leftover == 0 {
            return self.current;
        }
        self.leftover -= 1;
        self.current - 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(pkid: u16, connection: u64) -> AckId {
        AckId {
            qos: QoS::AtLeastOnce,
            pkid,
            connection,
        }
    }

    /// [`PubAcks::push`] with a channel that takes the wake: what it was sent.
    fn push(q: &PubAcks, acks: impl IntoIterator<Item = AckId>) -> Option<AckId> {
        let mut sent = None;
        assert_eq!(
            q.push(acks, |wake| {
                sent = Some(wake);
                true
            }),
            None
        );
        sent
    }

    fn pkids(acks: &[AckId]) -> Vec<u16> {
        acks.iter().map(|a| a.pkid).collect()
    }

    #[test]
    fn the_head_wakes_and_the_rest_follow_it_in_arrival_order() {
        let q = PubAcks::default();
        assert_eq!(push(&q, [ack(1, 0), ack(2, 0)]), Some(ack(1, 0)));
        // While the wake is outstanding, more join the queue without a wake of their own.
        assert_eq!(push(&q, [ack(3, 0)]), None);
        assert_eq!(push(&q, [ack(4, 0)]), None);
        assert!(!q.idle());
        assert_eq!(pkids(&q.written(1)), [2, 3, 4]);
        assert!(q.idle());
        // The next PUBACK wakes afresh.
        assert_eq!(push(&q, [ack(5, 0), ack(6, 0)]), Some(ack(5, 0)));
        assert_eq!(pkids(&q.written(5)), [6]);
    }

    #[test]
    fn a_wake_the_channel_cannot_take_is_handed_back_and_stays_outstanding() {
        let q = PubAcks::default();
        assert_eq!(q.push([ack(1, 0), ack(2, 0)], |_| false), Some(ack(1, 0)));
        assert!(!q.idle(), "the caller sends it by waiting");
        assert_eq!(push(&q, [ack(3, 0)]), None);
        assert_eq!(pkids(&q.written(1)), [2, 3]);
    }

    #[test]
    fn a_lost_connection_empties_rumqttcs_channel_while_the_queue_is_locked() {
        let q = PubAcks::default();
        assert_eq!(push(&q, [ack(1, 0)]), Some(ack(1, 0)));
        let mut cleaned = false;
        q.lost(|| {
            // No wake can be sent meanwhile: the queue is locked.
            assert!(q.0.try_lock().is_err());
            cleaned = true;
        });
        assert!(cleaned);
        assert!(q.idle());
    }

    #[test]
    fn a_report_of_another_acknowledgement_takes_nothing() {
        let q = PubAcks::default();
        assert_eq!(push(&q, [ack(7, 0), ack(8, 0)]), Some(ack(7, 0)));
        // A PUBACK rumqttc wrote that was not the wake outstanding (one from before a
        // reconnect that was already in its channel) must not release the queue early.
        assert!(q.written(8).is_empty());
        assert!(!q.idle());
        assert_eq!(pkids(&q.written(7)), [8]);
    }

    #[test]
    fn a_lost_connection_drops_the_queue_and_later_pubacks_of_its_publishes() {
        let q = PubAcks::default();
        assert_eq!(q.connection(), 0);
        assert_eq!(push(&q, [ack(1, 0), ack(2, 0)]), Some(ack(1, 0)));
        assert_eq!(q.lost(|| {}), 1);
        assert!(q.idle(), "the wake went with the connection");
        assert!(
            q.written(1).is_empty(),
            "a stale wake's report releases nothing"
        );
        // Publishes of the lost connection, committed after it went: the broker sends them
        // again, so their PUBACKs are not queued.
        assert_eq!(push(&q, [ack(3, 0), ack(4, 0)]), None);
        assert!(q.idle());
        assert_eq!(push(&q, [ack(3, 0), ack(1, 1), ack(2, 1)]), Some(ack(1, 1)));
        assert_eq!(pkids(&q.written(1)), [2]);
    }

    #[test]
    fn events_read_before_a_connection_was_lost_are_its_own_even_after_the_next_connack() {
        let mut eventloop = EventLoop::new(rumqttc::MqttOptions::new("t", "localhost", 1883), 1);
        let mut connections = Connections::new(PubAcks::default());
        assert_eq!(connections.came_on(true), 0);
        assert_eq!(connections.came_on(false), 0);
        // Two publishes read, then the connection lost: rumqttc keeps them in its events.
        for pkid in [5, 6] {
            let mut publish = rumqttc::Publish::new("vitals/a", QoS::AtLeastOnce, "{}");
            publish.pkid = pkid;
            eventloop
                .state
                .events
                .push_back(rumqttc::Event::Incoming(Packet::Publish(publish)));
        }
        connections.lost(&mut eventloop);
        // A reconnect that fails first: they are still kept, and still the first lost one's.
        connections.lost(&mut eventloop);
        // The next connection's CONNACK, then the two kept events, then its own.
        assert_eq!(connections.came_on(true), 2);
        assert_eq!(connections.came_on(false), 1);
        assert_eq!(connections.came_on(false), 1);
        assert_eq!(connections.came_on(false), 2);
    }

    #[test]
    fn qos_0_needs_no_acknowledgement_and_qos_2_is_answered_with_pubrec() {
        let q = PubAcks::default();
        let qos0 = AckId {
            qos: QoS::AtMostOnce,
            ..ack(1, 0)
        };
        assert_eq!(push(&q, [qos0]), None);
        assert!(q.idle());
        let qos2 = AckId {
            qos: QoS::ExactlyOnce,
            ..ack(2, 0)
        };
        assert_eq!(qos0.packet(), None);
        assert_eq!(qos2.packet(), Some(Packet::PubRec(PubRec::new(2))));
        assert_eq!(ack(3, 0).packet(), Some(Packet::PubAck(PubAck::new(3))));
    }
}
