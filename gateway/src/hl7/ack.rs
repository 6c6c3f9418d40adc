//! HL7 v2 acknowledgements: the ACK the listener sends, and reading the ACK an interface
//! engine sends back to the uplink. Pure.
//!
//! # Format of the ACK sent
//!
//! ```text
//! MSH|^~\&|<MSH-5>|<MSH-6>|<MSH-3>|<MSH-4>|<now>||ACK^<MSH-9.2>^ACK|<id>|<MSH-11>|<MSH-12>||||||<MSH-18>
//! MSA|AA|<MSH-10>
//! ERR|<seg>^<seq>^<field>^<code>&<text>&HL70357|<seg>^<seq>^<field>|<code>^<text>^HL70357|E   (AE, AR only)
//! ```
//!
//! Sender and receiver are swapped, the version, processing id and character set echoed,
//! MSA-2 is the message's control id. For AE/AR, MSA-3 carries the text too (for v2.3/2.4
//! readers) and ERR is written so that both the v2.3/2.4 reading (ERR-1) and the v2.5+
//! reading (ERR-2, ERR-3, ERR-4) find the location, the HL7 table 0357 code and the text.
//! The ACK is written with the default delimiters `|^~\&` and encoded in the message's
//! character set.

use time::OffsetDateTime;

use super::dtm;
use super::pcd::{AckCode, ErrorInfo, Header};
use super::v2::{Charset, Delimiters, Message, ParseError};

/// An ACK message (without MLLP framing), in `charset`.
pub fn build(
    header: &Header,
    charset: Charset,
    code: AckCode,
    error: Option<&ErrorInfo>,
    now: OffsetDateTime,
    ack_id: &str,
) -> Vec<u8> {
    let d = Delimiters::default();
    let e = |t: &str| d.escape(t);
    let event = if header.event.is_empty() {
        "ACK".to_owned()
    } else {
        format!("ACK^{}^ACK", e(&header.event))
    };
    let processing = if header.processing_id.is_empty() {
        "P".to_owned()
    } else {
        e(&header.processing_id)
    };
    let version = if header.version.is_empty() {
        "2.6".to_owned()
    } else {
        e(&header.version)
    };
    let mut text = format!(
        "MSH|^~\\&|{}|{}|{}|{}|{}||{event}|{}|{processing}|{version}||||||{}\r",
        header.receiving_application,
        header.receiving_facility,
        header.sending_application,
        header.sending_facility,
        dtm::format(now),
        e(ack_id),
        charset.msh18(),
    );
    text.push_str(&format!("MSA|{}|{}", code.as_str(), e(&header.control_id)));
    if let Some(err) = error {
        let t = e(&err.text);
        text.push_str(&format!("|{t}\r"));
        let location = if err.segment.is_empty() {
            String::new()
        } else {
            format!("{}^{}^{}", e(&err.segment), err.sequence, err.field)
        };
        text.push_str(&format!(
            "ERR|{location}^{code}&{t}&HL70357|{location}|{code}^{t}^HL70357|E\r",
            code = err.code
        ));
    } else {
        text.push('\r');
    }
    charset.encode(&text)
}

/// What an engine's ACK said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// MSA-1: `AA`, `AE`, `AR`, or the enhanced-mode `CA`, `CE`, `CR`.
    pub code: String,
    /// MSA-2: the control id it acknowledges.
    pub control_id: String,
    /// The error text, from ERR-3.2, ERR-8, ERR-1.4.2 or MSA-3 (first found); empty if none.
    pub text: String,
}

/// Reads an ACK.
pub fn parse(bytes: &[u8]) -> Result<Answer, ParseError> {
    let m = Message::parse(bytes)?;
    let msa = m
        .first("MSA")
        .ok_or(ParseError::NotHl7("no MSA segment in the acknowledgement"))?;
    let get = |s, f, c, sub| m.value(s, f, c, sub).unwrap_or_default();
    let code = get(msa, 1, 0, 0);
    let control_id = get(msa, 2, 0, 0);
    let mut text = String::new();
    if let Some(err) = m.first("ERR") {
        for candidate in [get(err, 3, 2, 0), get(err, 8, 0, 0), get(err, 1, 4, 2)] {
            if !candidate.is_empty() {
                text = candidate;
                break;
            }
        }
    }
    if text.is_empty() {
        text = get(msa, 3, 0, 0);
    }
    Ok(Answer {
        code,
        control_id,
        text,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn header() -> Header {
        Header {
            sending_application: "MON^0012211839000001^EUI-64".into(),
            sending_facility: "ICU".into(),
            receiving_application: "VB".into(),
            receiving_facility: "HOSP".into(),
            event: "R01".into(),
            control_id: "MSG|42".into(),
            processing_id: "P".into(),
            version: "2.6".into(),
        }
    }

    #[test]
    fn an_aa_swaps_sender_and_receiver_and_echoes_the_control_id_and_version() {
        let bytes = build(
            &header(),
            Charset::Utf8,
            AckCode::Accept,
            None,
            datetime!(2026-01-05 10:15:00 +01:00),
            "VB1",
        );
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert_eq!(
            text,
            "MSH|^~\\&|VB|HOSP|MON^0012211839000001^EUI-64|ICU|20260105101500+0100||ACK^R01^ACK|VB1|P|2.6||||||UNICODE UTF-8\rMSA|AA|MSG\\F\\42\r"
        );
        let a = parse(&bytes).unwrap();
        assert_eq!(a.code, "AA");
        assert_eq!(a.control_id, "MSG|42");
        assert_eq!(a.text, "");
    }

    #[test]
    fn an_ae_says_where_and_what_in_err_for_old_and_new_readers() {
        let err = ErrorInfo {
            segment: "OBX".into(),
            sequence: 3,
            field: 5,
            code: 102,
            text: "OBX-5 is not a number & more".into(),
        };
        let bytes = build(
            &header(),
            Charset::Latin1,
            AckCode::Error,
            Some(&err),
            datetime!(2026-01-05 10:15:00 UTC),
            "VB2",
        );
        let m = Message::parse(&bytes).unwrap();
        let e = m.first("ERR").unwrap();
        assert_eq!(m.value(e, 1, 1, 0).unwrap(), "OBX");
        assert_eq!(m.value(e, 1, 4, 1).unwrap(), "102");
        assert_eq!(m.value(e, 2, 3, 0).unwrap(), "5");
        assert_eq!(m.value(e, 3, 1, 0).unwrap(), "102");
        assert_eq!(m.value(e, 4, 0, 0).unwrap(), "E");
        let a = parse(&bytes).unwrap();
        assert_eq!(a.code, "AE");
        assert_eq!(a.text, "OBX-5 is not a number & more");
    }

    #[test]
    fn an_answer_without_msa_is_an_error() {
        assert!(parse(b"MSH|^~\\&|A||||2026||ACK|1|P|2.6\r").is_err());
        assert!(parse(b"garbage").is_err());
    }
}
