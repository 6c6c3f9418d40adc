//! Shared proptest strategies: arbitrary values of every message type, covering every
//! variant and the full range of every field.
#![allow(dead_code)]

use heapless::{String, Vec};
use proptest::prelude::*;
use vitalbridge_firmware::message::*;

/// A string of at most `N` bytes, with multi-byte characters now and then.
pub fn arb_string<const N: usize>() -> impl Strategy<Value = String<N>> {
    any::<std::string::String>().prop_map(|s| {
        let mut out = String::new();
        for c in s.chars() {
            if out.push(c).is_err() {
                break;
            }
        }
        out
    })
}

/// A bounded vector of up to `N` elements.
pub fn arb_vec<T: core::fmt::Debug, const N: usize>(
    element: impl Strategy<Value = T>,
) -> impl Strategy<Value = Vec<T, N>> {
    proptest::collection::vec(element, 0..=N).prop_map(|v| v.into_iter().collect())
}

pub fn arb_device_time() -> impl Strategy<Value = DeviceTime> {
    prop_oneof![
        Just(DeviceTime::NoClock),
        any::<u64>().prop_map(DeviceTime::UnixMillis),
    ]
}

pub fn arb_special() -> impl Strategy<Value = Special> {
    prop_oneof![
        Just(Special::NaN),
        Just(Special::NRes),
        Just(Special::PositiveInfinity),
        Just(Special::NegativeInfinity),
    ]
}

pub fn arb_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        (any::<i32>(), any::<i8>()).prop_map(|(m, e)| Value::decimal(m, e)),
        arb_special().prop_map(Value::Special),
    ]
}

pub fn arb_reading() -> impl Strategy<Value = Reading> {
    (
        any::<u32>(),
        arb_device_time(),
        any::<u32>(),
        proptest::option::of(arb_value()),
        arb_string::<MAX_UNIT_LEN>(),
        arb_vec::<_, MAX_COMPONENTS>(
            (any::<u32>(), arb_value()).prop_map(|(metric, value)| Component { metric, value }),
        ),
        any::<u16>().prop_map(Status),
    )
        .prop_map(
            |(seq, time, metric, value, unit, components, status)| Reading {
                seq,
                time,
                metric,
                value,
                unit,
                components,
                status,
            },
        )
}

pub fn arb_hello() -> impl Strategy<Value = Hello> {
    (
        proptest::option::of(any::<[u8; 8]>()),
        arb_string::<MAX_ID_LEN>(),
        arb_string::<MAX_ID_LEN>(),
        arb_string::<MAX_ID_LEN>(),
        arb_string::<MAX_VERSION_LEN>(),
        arb_string::<MAX_ID_LEN>(),
    )
        .prop_map(
            |(system_id, serial, manufacturer, model, firmware, profile)| Hello {
                system_id,
                serial,
                manufacturer,
                model,
                firmware,
                profile,
            },
        )
}

pub fn arb_seqs() -> impl Strategy<Value = SeqList> {
    arb_vec::<_, MAX_READINGS>(any::<u32>())
}

pub fn arb_message() -> impl Strategy<Value = Message> {
    prop_oneof![
        arb_hello().prop_map(Message::Hello),
        arb_vec::<_, MAX_READINGS>(arb_reading())
            .prop_map(|readings| Message::Readings(Readings { readings })),
        arb_seqs().prop_map(|seqs| Message::Ack(Ack { seqs })),
        (arb_seqs(), any::<u8>()).prop_map(|(seqs, code)| Message::Nack(Nack {
            seqs,
            reason: NackReason::from(code),
        })),
        (any::<u32>(), arb_device_time()).prop_map(|(token, device_time)| {
            Message::TimeRequest(TimeRequest { token, device_time })
        }),
        (any::<u32>(), any::<u64>()).prop_map(|(token, gateway_unix_millis)| {
            Message::TimeResponse(TimeResponse {
                token,
                gateway_unix_millis,
            })
        }),
        (any::<u32>(), any::<u16>(), arb_device_time()).prop_map(
            |(uptime_secs, pending, device_time)| Message::Heartbeat(Heartbeat {
                uptime_secs,
                pending,
                device_time,
            })
        ),
    ]
}

pub fn full_string<const N: usize>() -> String<N> {
    let mut s = String::new();
    while s.push('x').is_ok() {}
    s
}

pub fn worst_case_reading() -> Reading {
    let worst_value = Value::decimal(i32::MIN, i8::MIN);
    let mut components = Vec::new();
    while components
        .push(Component {
            metric: u32::MAX,
            value: worst_value,
        })
        .is_ok()
    {}
    Reading {
        seq: u32::MAX,
        time: DeviceTime::UnixMillis(u64::MAX),
        metric: u32::MAX,
        value: Some(worst_value),
        unit: full_string(),
        components,
        status: Status(u16::MAX),
    }
}

/// The largest message there is: a full [`Readings`] of worst-case readings.
pub fn largest_message() -> Message {
    let mut readings = Vec::new();
    while readings.push(worst_case_reading()).is_ok() {}
    Message::Readings(Readings { readings })
}
