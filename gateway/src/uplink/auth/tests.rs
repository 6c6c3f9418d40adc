use super::*;

#[test]
fn secrets_and_tokens_are_redacted_in_debug() {
    let s = Secret::new("s3cr3t-value".into());
    assert_eq!(format!("{s:?}"), "[redacted]");
    let mut header = HeaderValue::from_static("Bearer s3cr3t-value");
    header.set_sensitive(true);
    let t = Token {
        header,
        refresh_at: None,
        expires_in: Some(60),
        scope: Some("system/Observation.c".into()),
    };
    assert!(!format!("{t:?}").contains("s3cr3t"), "{t:?}");
}

#[test]
fn a_refusal_says_what_to_check() {
    let e = AuthError::Refused {
        endpoint: "https://auth.example/token".into(),
        status: 401,
        error: Some("invalid_client: client authentication failed".into()),
    };
    assert_eq!(
        e.to_string(),
        "token endpoint https://auth.example/token refused the gateway (HTTP 401, \
         invalid_client: client authentication failed): check client_id, the key or secret \
         the server has registered for it, and the gateway's clock"
    );
}

#[test]
fn tokens_are_renewed_before_they_expire_and_short_ones_halfway() {
    let s = Duration::from_secs;
    assert_eq!(renew_after(s(3600), s(60)), s(3540));
    assert_eq!(renew_after(s(300), s(60)), s(240));
    assert_eq!(renew_after(s(60), s(60)), s(30));
    assert_eq!(renew_after(s(4), s(60)), s(2));
    assert_eq!(renew_after(s(1), s(0)), s(1));
}
