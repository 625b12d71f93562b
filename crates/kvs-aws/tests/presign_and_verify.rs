//! KVS JS SDK presign vectors, REST signing round trips and verification failures.

use std::time::{Duration, SystemTime};

use kvs_aws::sigv4::{presign_url, sign_request, RequestToSign, DEFAULT_PRESIGN_EXPIRES};
use kvs_aws::verify::{IncomingRequest, StaticKeys, Verifier, VerifierConfig, VerifyError};
use kvs_aws::{clock_offset_from_response, Credentials};

const AKID: &str = "AKIA4F7WJQR7FMMWMNXI";
const SECRET: &str = "FakeSecretKey";
const TOKEN: &str = "FakeSessionToken";

/// 2019-12-01T00:00:00Z
fn js_time() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_575_158_400)
}

fn creds(token: bool) -> Credentials {
    Credentials::new(AKID, SECRET, token.then(|| TOKEN.to_string()), None)
}

fn js_presign(token: bool, service: &str, endpoint: &str) -> String {
    presign_url(
        &creds(token),
        "us-west-2",
        service,
        js_time(),
        endpoint,
        &[("X-Amz-TestParam", "test-param-value")],
        DEFAULT_PRESIGN_EXPIRES,
    )
    .unwrap()
}

/// The exact URLs expected by the KVS JS SDK's SigV4RequestSigner tests.
#[test]
fn presign_matches_kvs_js_sdk_vectors() {
    assert_eq!(
        js_presign(true, "kinesisvideo", "wss://kvs.awsamazon.com"),
        "wss://kvs.awsamazon.com/?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIA4F7WJQR7FMMWMNXI%2F20191201%2Fus-west-2%2Fkinesisvideo%2Faws4_request&X-Amz-Date=20191201T000000Z&X-Amz-Expires=299&X-Amz-Security-Token=FakeSessionToken&X-Amz-Signature=fc268038be276315822b4f73eafd28ee3a5632a2a35fdb0a88db9a42b13d6c92&X-Amz-SignedHeaders=host&X-Amz-TestParam=test-param-value"
    );
    assert_eq!(
        js_presign(false, "kinesisvideo", "wss://kvs.awsamazon.com"),
        "wss://kvs.awsamazon.com/?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIA4F7WJQR7FMMWMNXI%2F20191201%2Fus-west-2%2Fkinesisvideo%2Faws4_request&X-Amz-Date=20191201T000000Z&X-Amz-Expires=299&X-Amz-Signature=be1e78950d956a8a9a1997417099ddbd7455619f3d08c4ad20e1e272179ca695&X-Amz-SignedHeaders=host&X-Amz-TestParam=test-param-value"
    );
    assert_eq!(
        js_presign(true, "firehose", "wss://kvs.awsamazon.com"),
        "wss://kvs.awsamazon.com/?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIA4F7WJQR7FMMWMNXI%2F20191201%2Fus-west-2%2Ffirehose%2Faws4_request&X-Amz-Date=20191201T000000Z&X-Amz-Expires=299&X-Amz-Security-Token=FakeSessionToken&X-Amz-Signature=f15308513d21a381d38b7607a0439f25fc2e6c9f5ff56a48c1664b486e6234d5&X-Amz-SignedHeaders=host&X-Amz-TestParam=test-param-value"
    );
    assert_eq!(
        js_presign(true, "kinesisvideo", "wss://kvs.awsamazon.com/path/path/path"),
        "wss://kvs.awsamazon.com/path/path/path?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIA4F7WJQR7FMMWMNXI%2F20191201%2Fus-west-2%2Fkinesisvideo%2Faws4_request&X-Amz-Date=20191201T000000Z&X-Amz-Expires=299&X-Amz-Security-Token=FakeSessionToken&X-Amz-Signature=0bf3df6ca23d8d82f688e8dbfb90d69e74843d40038541b1721c545eef7612a4&X-Amz-SignedHeaders=host&X-Amz-TestParam=test-param-value"
    );
}

fn keys() -> StaticKeys {
    let mut k = StaticKeys::new();
    k.insert(AKID, SECRET, vec![TOKEN.into()]);
    k.insert("AKIDLONGTERM", "LongTermSecret", vec![]);
    k
}

fn split_url(url: &str) -> (String, String, String) {
    let rest = url.split_once("://").unwrap().1;
    let slash = rest.find('/').unwrap();
    let host = rest[..slash].to_string();
    let (path, query) = rest[slash..].split_once('?').unwrap();
    (host, path.to_string(), query.to_string())
}

fn verify_url(
    url: &str,
    keys: &StaticKeys,
    now: SystemTime,
) -> Result<kvs_aws::Verified, VerifyError> {
    let (host, path, query) = split_url(url);
    let headers = [("Host", host.as_str()), ("Upgrade", "websocket")];
    Verifier::default().verify(
        &IncomingRequest {
            method: "GET",
            path: &path,
            query: &query,
            headers: &headers,
            body: b"",
        },
        keys,
        now,
    )
}

#[test]
fn presigned_urls_verify_and_failures_are_typed() {
    let keys = keys();
    let url = js_presign(true, "kinesisvideo", "wss://kvs.awsamazon.com");
    let ok = verify_url(&url, &keys, js_time() + Duration::from_secs(10)).unwrap();
    assert!(ok.presigned);
    assert_eq!(ok.service, "kinesisvideo");
    assert_eq!(ok.region, "us-west-2");
    assert_eq!(ok.session_token.as_deref(), Some(TOKEN));
    assert_eq!(ok.expires_at, Some(js_time() + Duration::from_secs(299)));

    // Tampered parameter.
    let tampered = url.replace("test-param-value", "test-param-valuX");
    assert!(matches!(
        verify_url(&tampered, &keys, js_time()),
        Err(VerifyError::SignatureMismatch { .. })
    ));
    // Wrong secret on the server side.
    let mut wrong = StaticKeys::new();
    wrong.insert(AKID, "OtherSecret", vec![TOKEN.into()]);
    let e = verify_url(&url, &wrong, js_time()).unwrap_err();
    assert!(matches!(e, VerifyError::SignatureMismatch { .. }));
    assert_eq!(e.error_code(), "InvalidSignatureException");
    assert!(e.to_string().starts_with(
        "The request signature we calculated does not match the signature you provided"
    ));
    // Expired presigned URL.
    let e = verify_url(&url, &keys, js_time() + Duration::from_secs(300)).unwrap_err();
    assert!(
        matches!(
            e,
            VerifyError::PresignedUrlExpired {
                expires_secs: 299,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("Signature expired"));
    assert_eq!(e.http_status(), 403);
    // Dated in the future beyond 5 minutes of skew.
    let e = verify_url(&url, &keys, js_time() - Duration::from_secs(301)).unwrap_err();
    assert!(
        matches!(e, VerifyError::SignatureNotYetCurrent { .. }),
        "{e:?}"
    );
    assert!(verify_url(&url, &keys, js_time() - Duration::from_secs(299)).is_ok());
    // Wrong / missing session token.
    let other_token = url.replace("FakeSessionToken", "OtherToken");
    assert_eq!(
        verify_url(&other_token, &keys, js_time()),
        Err(VerifyError::InvalidSessionToken)
    );
    let no_token = js_presign(false, "kinesisvideo", "wss://kvs.awsamazon.com");
    let e = verify_url(&no_token, &keys, js_time()).unwrap_err();
    assert_eq!(e, VerifyError::InvalidSessionToken);
    assert_eq!(e.error_code(), "UnrecognizedClientException");
    // Unknown key.
    let e = verify_url(&url, &StaticKeys::new(), js_time()).unwrap_err();
    assert!(matches!(e, VerifyError::UnknownAccessKey { .. }));
    // Scope checks.
    let (host, path, query) = split_url(&url);
    let headers = [("host", host.as_str())];
    let req = IncomingRequest {
        method: "GET",
        path: &path,
        query: &query,
        headers: &headers,
        body: b"",
    };
    let strict = Verifier::new(VerifierConfig {
        region: Some("eu-west-1".into()),
        ..VerifierConfig::default()
    });
    assert!(matches!(
        strict.verify(&req, &keys, js_time()),
        Err(VerifyError::WrongScope { what: "region", .. })
    ));
}

/// A local service on a non-default port: the port is part of the signed host.
#[test]
fn presign_with_port_and_channel_params_round_trips() {
    let arn = "arn:aws:kinesisvideo:us-west-2:123456789012:channel/demo-channel/1234567890123";
    let url = presign_url(
        &creds(true),
        "us-west-2",
        "kinesisvideo",
        js_time(),
        "wss://127.0.0.1:8443",
        &[("X-Amz-ChannelARN", arn), ("X-Amz-ClientId", "viewer-1")],
        DEFAULT_PRESIGN_EXPIRES,
    )
    .unwrap();
    assert!(
        url.starts_with("wss://127.0.0.1:8443/?X-Amz-Algorithm="),
        "{url}"
    );
    assert!(url.contains("X-Amz-ChannelARN=arn%3Aaws%3Akinesisvideo%3Aus-west-2%3A123456789012%3Achannel%2Fdemo-channel%2F1234567890123"));
    assert!(verify_url(&url, &keys(), js_time()).is_ok());
    // Same query presented with another host (port dropped): refused.
    let (_, path, query) = split_url(&url);
    let headers = [("Host", "127.0.0.1")];
    let req = IncomingRequest {
        method: "GET",
        path: &path,
        query: &query,
        headers: &headers,
        body: b"",
    };
    assert!(matches!(
        Verifier::default().verify(&req, &keys(), js_time()),
        Err(VerifyError::SignatureMismatch { .. })
    ));
}

fn signed_post(creds: &Credentials, time: SystemTime, body: &[u8]) -> Vec<(String, String)> {
    let mut headers = vec![
        ("host".to_string(), "127.0.0.1:8443".to_string()),
        ("content-type".to_string(), "application/json".to_string()),
        ("user-agent".to_string(), "kvs-webrtc/0.1".to_string()),
    ];
    let h: Vec<(&str, &str)> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let added = sign_request(
        creds,
        "us-west-2",
        "kinesisvideo",
        time,
        &RequestToSign {
            method: "POST",
            url: "https://127.0.0.1:8443/describeSignalingChannel",
            headers: &h,
            body,
        },
    )
    .unwrap();
    headers.extend(added);
    headers
}

fn verify_post(
    headers: &[(String, String)],
    body: &[u8],
    keys: &StaticKeys,
    now: SystemTime,
) -> Result<kvs_aws::Verified, VerifyError> {
    let h: Vec<(&str, &str)> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    Verifier::default().verify(
        &IncomingRequest {
            method: "POST",
            path: "/describeSignalingChannel",
            query: "",
            headers: &h,
            body,
        },
        keys,
        now,
    )
}

#[test]
fn rest_requests_round_trip_and_failures_are_typed() {
    let keys = keys();
    let body = br#"{"ChannelName":"demo-channel"}"#;
    let now = js_time();
    let headers = signed_post(&creds(true), now, body);
    let names: Vec<&str> = headers.iter().map(|(k, _)| k.as_str()).collect();
    assert!(names.contains(&"authorization") && names.contains(&"x-amz-date"));
    let ok = verify_post(&headers, body, &keys, now + Duration::from_secs(60)).unwrap();
    assert!(!ok.presigned);
    assert!(ok.signed_headers.contains(&"content-type".to_string()));
    assert!(!ok.signed_headers.contains(&"user-agent".to_string()));

    // Body tampered.
    assert!(matches!(
        verify_post(&headers, br#"{"ChannelName":"other"}"#, &keys, now),
        Err(VerifyError::SignatureMismatch { .. })
    ));
    // Signed header tampered.
    let mut h2 = headers.clone();
    h2[1].1 = "text/plain".into();
    assert!(matches!(
        verify_post(&h2, body, &keys, now),
        Err(VerifyError::SignatureMismatch { .. })
    ));
    // An unsigned header may change (user-agent is not signed).
    let mut h3 = headers.clone();
    h3[2].1 = "proxy-changed".into();
    assert!(verify_post(&h3, body, &keys, now).is_ok());
    // Expired: signed 5 min + 1 s ago.
    let e = verify_post(&headers, body, &keys, now + Duration::from_secs(301)).unwrap_err();
    assert!(matches!(e, VerifyError::SignatureExpired { .. }));
    let msg = e.to_string();
    assert_eq!(
        msg,
        "Signature expired: 20191201T000000Z is now earlier than 20191201T000001Z (20191201T000501Z - 5 min.)"
    );
    // The client-side helper recognises that answer and computes the offset.
    let off = clock_offset_from_response(
        403,
        &format!("{{\"message\":\"{msg}\"}}"),
        Some("Sun, 01 Dec 2019 00:05:01 GMT"),
        now,
    )
    .unwrap();
    assert_eq!(off.millis, 301_000);
    let resigned = signed_post(&creds(true), off.apply(now), body);
    assert!(verify_post(&resigned, body, &keys, now + Duration::from_secs(301)).is_ok());
    // Future-dated.
    let e = verify_post(&headers, body, &keys, now - Duration::from_secs(301)).unwrap_err();
    assert!(matches!(e, VerifyError::SignatureNotYetCurrent { .. }));
    assert!(e
        .to_string()
        .starts_with("Signature not yet current: 20191201T000000Z"));
    // Wrong token.
    let mut h4 = headers.clone();
    for (k, v) in h4.iter_mut() {
        if k == "x-amz-security-token" {
            *v = "Forged".into();
        }
    }
    assert_eq!(
        verify_post(&h4, body, &keys, now),
        Err(VerifyError::InvalidSessionToken)
    );
    // Long-term key sending a token is refused; without one it passes.
    let lt = Credentials::new("AKIDLONGTERM", "LongTermSecret", None, None);
    let h5 = signed_post(&lt, now, body);
    assert!(verify_post(&h5, body, &keys, now).is_ok());
    let lt_tok = Credentials::new("AKIDLONGTERM", "LongTermSecret", Some("x".into()), None);
    assert_eq!(
        verify_post(&signed_post(&lt_tok, now, body), body, &keys, now),
        Err(VerifyError::InvalidSessionToken)
    );
    // No authorization at all.
    let plain = vec![("host".to_string(), "127.0.0.1:8443".to_string())];
    let e = verify_post(&plain, body, &keys, now).unwrap_err();
    assert_eq!(e, VerifyError::MissingAuthentication);
    assert_eq!(e.error_code(), "MissingAuthenticationTokenException");
}

/// The C SDK signs only `host;user-agent;x-amz-date` and sends the token unsigned: the
/// verifier follows the client's SignedHeaders. Signature built independently here with the
/// HMAC primitives, as a C client would.
#[test]
fn c_sdk_style_request_with_unsigned_token_verifies() {
    use hmac::{Hmac, KeyInit, Mac};
    use sha2::{Digest, Sha256};
    fn hmac(key: &[u8], data: &str) -> Vec<u8> {
        let mut m = Hmac::<Sha256>::new_from_slice(key).unwrap();
        m.update(data.as_bytes());
        m.finalize().into_bytes().to_vec()
    }
    let body = br#"{"ChannelARN":"arn"}"#;
    let amz_date = "20191201T000000Z";
    let canonical = format!(
        "POST\n/getSignalingChannelEndpoint\n\nhost:kinesisvideo.us-west-2.amazonaws.com\nuser-agent:AWS-SDK-KVS/1.0\nx-amz-date:{amz_date}\n\nhost;user-agent;x-amz-date\n{}",
        hex::encode(Sha256::digest(body))
    );
    let sts = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n20191201/us-west-2/kinesisvideo/aws4_request\n{}",
        hex::encode(Sha256::digest(canonical.as_bytes()))
    );
    let mut key = hmac(format!("AWS4{SECRET}").as_bytes(), "20191201");
    for part in ["us-west-2", "kinesisvideo", "aws4_request"] {
        key = hmac(&key, part);
    }
    let sig = hex::encode(hmac(&key, &sts));
    let auth = format!(
        "AWS4-HMAC-SHA256 Credential={AKID}/20191201/us-west-2/kinesisvideo/aws4_request, SignedHeaders=host;user-agent;x-amz-date, Signature={sig}"
    );
    let headers = [
        ("Host", "kinesisvideo.us-west-2.amazonaws.com"),
        ("User-Agent", "AWS-SDK-KVS/1.0"),
        ("X-Amz-Date", amz_date),
        ("x-amz-security-token", TOKEN),
        ("Authorization", auth.as_str()),
        ("Content-Type", "application/json"),
    ];
    let req = IncomingRequest {
        method: "POST",
        path: "/getSignalingChannelEndpoint",
        query: "",
        headers: &headers,
        body,
    };
    let v = Verifier::default()
        .verify(&req, &keys(), js_time())
        .unwrap();
    assert_eq!(v.signed_headers, ["host", "user-agent", "x-amz-date"]);
    assert_eq!(v.session_token.as_deref(), Some(TOKEN));
}
