//! Record Access Control Point (0x2A52), GATT Specification Supplement "Record Access
//! Control Point", as the Glucose Service (GLS 1.0.1 §3.4) uses it to fetch stored records.
//!
//! The collector writes a request and the meter answers by notifying the requested Glucose
//! Measurements (each followed by its Context when it has one), then indicating one RACP
//! response that ends the procedure.
//!
//! # Format
//!
//! Every value is `Op Code (uint8), Operator (uint8), Operand (0 or more bytes)`.
//!
//! | op code | meaning                          | operator              | operand |
//! |---------|----------------------------------|-----------------------|---------|
//! | `0x01`  | Report stored records            | `0x01` all records    | none    |
//! |         |                                  | `0x03` ≥ (greater or equal) | filter type `0x01` (sequence number), uint16 |
//! | `0x04`  | Report number of stored records  | as for `0x01`         | as for `0x01` |
//! | `0x05`  | Number of stored records response | `0x00` null          | uint16 count |
//! | `0x06`  | Response code                    | `0x00` null           | request op code (uint8), response code value (uint8) |
//!
//! Response code values: `0x01` success, `0x02` op code not supported, `0x03` invalid
//! operator, `0x04` operator not supported, `0x05` invalid operand, `0x06` no records found,
//! `0x07` abort unsuccessful, `0x08` procedure not completed, `0x09` operand not supported.
//! Other values are reserved and kept as [`ResponseCode::Reserved`] (a meter that answers
//! with one still ended the procedure).
//!
//! # What the gateway asks
//!
//! Only for records it does not hold: "report stored records, greater than or equal to,
//! sequence number `last + 1`" where `last` is the highest sequence number already in the
//! buffer for that meter ([`crate::pipeline::Ingest::last_sequence`]), or "all records" when
//! it holds none. See [`Request::after`].

use super::{DecodeError, Reader};

/// RACP op code "Report stored records".
pub const OP_REPORT_STORED_RECORDS: u8 = 0x01;
/// RACP op code "Number of stored records response".
pub const OP_NUMBER_RESPONSE: u8 = 0x05;
/// RACP op code "Response code".
pub const OP_RESPONSE_CODE: u8 = 0x06;
/// Operator "null".
pub const OPERATOR_NULL: u8 = 0x00;
/// Operator "all records".
pub const OPERATOR_ALL: u8 = 0x01;
/// Operator "greater than or equal to".
pub const OPERATOR_GREATER_OR_EQUAL: u8 = 0x03;
/// Filter type "sequence number".
pub const FILTER_SEQUENCE_NUMBER: u8 = 0x01;

/// A request the gateway writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// Report every stored record.
    AllRecords,
    /// Report the records whose sequence number is at least this.
    FromSequence(u16),
}

impl Request {
    /// The request for the records after `last`, the highest sequence number already held
    /// (`None`: none held, ask for all). Sequence numbers are uint16: a meter whose last
    /// record we hold is 65535 has nothing newer to give without wrapping, so we ask from
    /// 65535 again and the buffer's identifier keeps that one record single.
    pub fn after(last: Option<u64>) -> Self {
        match last {
            None => Request::AllRecords,
            Some(last) => {
                Request::FromSequence(u16::try_from(last.saturating_add(1)).unwrap_or(u16::MAX))
            }
        }
    }

    /// The bytes to write to the control point.
    pub fn encode(self) -> Vec<u8> {
        match self {
            Request::AllRecords => vec![OP_REPORT_STORED_RECORDS, OPERATOR_ALL],
            Request::FromSequence(seq) => {
                let [lo, hi] = seq.to_le_bytes();
                vec![
                    OP_REPORT_STORED_RECORDS,
                    OPERATOR_GREATER_OR_EQUAL,
                    FILTER_SEQUENCE_NUMBER,
                    lo,
                    hi,
                ]
            }
        }
    }
}

/// Response code values of op code `0x06`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseCode {
    /// `0x01`.
    Success,
    /// `0x02`.
    OpCodeNotSupported,
    /// `0x03`.
    InvalidOperator,
    /// `0x04`.
    OperatorNotSupported,
    /// `0x05`.
    InvalidOperand,
    /// `0x06`: nothing matched the request (nothing new on the meter).
    NoRecordsFound,
    /// `0x07`.
    AbortUnsuccessful,
    /// `0x08`.
    ProcedureNotCompleted,
    /// `0x09`.
    OperandNotSupported,
    /// Any other value.
    Reserved(u8),
}

impl ResponseCode {
    fn from_code(code: u8) -> Self {
        match code {
            0x01 => Self::Success,
            0x02 => Self::OpCodeNotSupported,
            0x03 => Self::InvalidOperator,
            0x04 => Self::OperatorNotSupported,
            0x05 => Self::InvalidOperand,
            0x06 => Self::NoRecordsFound,
            0x07 => Self::AbortUnsuccessful,
            0x08 => Self::ProcedureNotCompleted,
            0x09 => Self::OperandNotSupported,
            other => Self::Reserved(other),
        }
    }

    /// Whether the procedure ended normally (records sent, or there were none to send).
    pub fn is_ok(self) -> bool {
        matches!(self, Self::Success | Self::NoRecordsFound)
    }

    /// A short name for logs.
    pub fn name(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::OpCodeNotSupported => "op code not supported",
            Self::InvalidOperator => "invalid operator",
            Self::OperatorNotSupported => "operator not supported",
            Self::InvalidOperand => "invalid operand",
            Self::NoRecordsFound => "no records found",
            Self::AbortUnsuccessful => "abort unsuccessful",
            Self::ProcedureNotCompleted => "procedure not completed",
            Self::OperandNotSupported => "operand not supported",
            Self::Reserved(_) => "reserved response code",
        }
    }
}

/// What a meter indicates on the control point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Response {
    /// The procedure for `request_op_code` ended with `code`.
    Code {
        /// The op code of the request this answers.
        request_op_code: u8,
        /// How it ended.
        code: ResponseCode,
    },
    /// The answer to "report number of stored records".
    NumberOfRecords(u16),
}

impl Response {
    /// Parses an indicated control-point value. A value that is not a response (a request
    /// op code, a reserved op code, a non-null operator) is an error naming the field.
    pub fn parse(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let op = r.u8("op code")?;
        let operator = r.u8("operator")?;
        if operator != OPERATOR_NULL {
            return Err(DecodeError::Reserved {
                field: "operator",
                offset: 1,
                value: u32::from(operator),
            });
        }
        match op {
            OP_RESPONSE_CODE => {
                let request_op_code = r.u8("request op code")?;
                let code = ResponseCode::from_code(r.u8("response code value")?);
                Ok(Response::Code {
                    request_op_code,
                    code,
                })
            }
            OP_NUMBER_RESPONSE => Ok(Response::NumberOfRecords(r.u16("number of records")?)),
            other => Err(DecodeError::Reserved {
                field: "op code",
                offset: 0,
                value: u32::from(other),
            }),
        }
    }

    /// The value a meter would indicate (for tests and simulated meters).
    pub fn encode(self) -> Vec<u8> {
        match self {
            Response::Code {
                request_op_code,
                code,
            } => {
                let value = match code {
                    ResponseCode::Success => 0x01,
                    ResponseCode::OpCodeNotSupported => 0x02,
                    ResponseCode::InvalidOperator => 0x03,
                    ResponseCode::OperatorNotSupported => 0x04,
                    ResponseCode::InvalidOperand => 0x05,
                    ResponseCode::NoRecordsFound => 0x06,
                    ResponseCode::AbortUnsuccessful => 0x07,
                    ResponseCode::ProcedureNotCompleted => 0x08,
                    ResponseCode::OperandNotSupported => 0x09,
                    ResponseCode::Reserved(v) => v,
                };
                vec![OP_RESPONSE_CODE, OPERATOR_NULL, request_op_code, value]
            }
            Response::NumberOfRecords(n) => {
                let [lo, hi] = n.to_le_bytes();
                vec![OP_NUMBER_RESPONSE, OPERATOR_NULL, lo, hi]
            }
        }
    }
}

/// Parses a request as a meter sees it (for simulated meters in tests): `None` when the
/// bytes are not one of the two requests the gateway sends.
pub fn parse_request(bytes: &[u8]) -> Option<Request> {
    match bytes {
        [OP_REPORT_STORED_RECORDS, OPERATOR_ALL] => Some(Request::AllRecords),
        [OP_REPORT_STORED_RECORDS, OPERATOR_GREATER_OR_EQUAL, FILTER_SEQUENCE_NUMBER, lo, hi] => {
            Some(Request::FromSequence(u16::from_le_bytes([*lo, *hi])))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Byte layouts from GSS "Record Access Control Point". Cross-checked against an
    /// independent implementation: NordicSemiconductor/Android-BLE-Common-Library,
    /// ble-common/src/main/java/.../common/data/RecordAccessControlPointData.java
    /// (reportAllStoredRecords: op 0x01 operator 0x01; reportStoredRecordsGreaterThenOrEqualTo:
    /// op 0x01, operator 0x03, filter type 0x01 sequence number, uint16 little-endian).
    #[test]
    fn requests_encode_byte_exact() {
        assert_eq!(Request::AllRecords.encode(), [0x01, 0x01]);
        assert_eq!(
            Request::FromSequence(2).encode(),
            [0x01, 0x03, 0x01, 0x02, 0x00]
        );
        assert_eq!(
            Request::FromSequence(0x1234).encode(),
            [0x01, 0x03, 0x01, 0x34, 0x12]
        );
        for r in [Request::AllRecords, Request::FromSequence(513)] {
            assert_eq!(parse_request(&r.encode()), Some(r));
        }
    }

    #[test]
    fn the_request_asks_only_for_what_the_buffer_does_not_hold() {
        assert_eq!(Request::after(None), Request::AllRecords);
        assert_eq!(Request::after(Some(0)), Request::FromSequence(1));
        assert_eq!(Request::after(Some(41)), Request::FromSequence(42));
        assert_eq!(Request::after(Some(65534)), Request::FromSequence(65535));
        assert_eq!(Request::after(Some(65535)), Request::FromSequence(65535));
        assert_eq!(Request::after(Some(u64::MAX)), Request::FromSequence(65535));
    }

    #[test]
    fn responses_parse_byte_exact() {
        assert_eq!(
            Response::parse(&[0x06, 0x00, 0x01, 0x01]),
            Ok(Response::Code {
                request_op_code: 1,
                code: ResponseCode::Success
            })
        );
        assert_eq!(
            Response::parse(&[0x06, 0x00, 0x01, 0x06]),
            Ok(Response::Code {
                request_op_code: 1,
                code: ResponseCode::NoRecordsFound
            })
        );
        assert_eq!(
            Response::parse(&[0x06, 0x00, 0x01, 0x42]),
            Ok(Response::Code {
                request_op_code: 1,
                code: ResponseCode::Reserved(0x42)
            })
        );
        assert_eq!(
            Response::parse(&[0x05, 0x00, 0x08, 0x00]),
            Ok(Response::NumberOfRecords(8))
        );
        for r in [
            Response::NumberOfRecords(300),
            Response::Code {
                request_op_code: 1,
                code: ResponseCode::ProcedureNotCompleted,
            },
        ] {
            assert_eq!(Response::parse(&r.encode()), Ok(r));
        }
    }

    #[test]
    fn malformed_responses_name_the_field() {
        let cases: &[(&[u8], &str)] = &[
            (&[], "`op code`"),
            (&[0x06], "`operator`"),
            (&[0x06, 0x00, 0x01], "`response code value`"),
            (&[0x05, 0x00, 0x08], "`number of records`"),
            (&[0x06, 0x01, 0x01, 0x01], "`operator`"),
            (&[0x01, 0x00], "`op code`"),
        ];
        for (bytes, field) in cases {
            let err = Response::parse(bytes).unwrap_err();
            assert!(err.to_string().contains(field), "{bytes:02X?}: {err}");
        }
    }
}
