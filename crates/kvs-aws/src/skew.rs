//! Clock-skew correction for signing.
//!
//! Owns: deciding from a rejected response (403 whose body says "Signature expired" or
//! "Signature not yet current", plus its `Date` header) how far the local clock is off, and
//! applying that offset to signing times. Pure functions; no I/O.
//!
//! Must not touch: retries or the network; the caller re-signs with the corrected time.

use std::time::{Duration, SystemTime};

/// Offset between the service's clock and ours: `service_time = local_time + offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ClockOffset {
    /// Signed offset in milliseconds (positive: the service is ahead of us).
    pub millis: i64,
}

impl ClockOffset {
    /// No correction.
    pub const ZERO: ClockOffset = ClockOffset { millis: 0 };

    /// Offset between a service time and a local time.
    pub fn between(service_time: SystemTime, local_time: SystemTime) -> Self {
        let millis = match service_time.duration_since(local_time) {
            Ok(ahead) => i64::try_from(ahead.as_millis()).unwrap_or(i64::MAX),
            Err(e) => -i64::try_from(e.duration().as_millis()).unwrap_or(i64::MAX),
        };
        Self { millis }
    }

    /// `local` corrected to the service's clock.
    pub fn apply(self, local: SystemTime) -> SystemTime {
        let d = Duration::from_millis(self.millis.unsigned_abs());
        if self.millis >= 0 {
            local + d
        } else {
            local.checked_sub(d).unwrap_or(SystemTime::UNIX_EPOCH)
        }
    }
}

/// True when a response body is the service's clock-skew complaint.
pub fn is_clock_skew_error(status: u16, body: &str) -> bool {
    status == 403
        && (body.contains("Signature expired") || body.contains("Signature not yet current"))
}

/// Given a response's status, body and `Date` header and our clock when the response arrived,
/// returns the offset to apply to the signing clock, or `None` when the response is not a
/// clock-skew rejection or has no usable `Date` header. The offset has one-second precision
/// (that of the `Date` header).
pub fn clock_offset_from_response(
    status: u16,
    body: &str,
    date_header: Option<&str>,
    local_now: SystemTime,
) -> Option<ClockOffset> {
    if !is_clock_skew_error(status, body) {
        return None;
    }
    let server = httpdate::parse_http_date(date_header?.trim()).ok()?;
    Some(ClockOffset::between(server, local_now))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn offset_from_signature_expired_response() {
        // 2019-12-01T00:00:00Z = 1575158400. Local clock is 1 hour behind.
        let body = r#"{"message":"Signature expired: 20191130T225500Z is now earlier than 20191130T235500Z (20191201T000000Z - 5 min.)"}"#;
        let off = clock_offset_from_response(
            403,
            body,
            Some("Sun, 01 Dec 2019 00:00:00 GMT"),
            at(1_575_158_400 - 3600),
        )
        .unwrap();
        assert_eq!(off.millis, 3_600_000);
        assert_eq!(off.apply(at(1_575_158_400 - 3600)), at(1_575_158_400));

        // Local clock ahead by 10 minutes.
        let body = "Signature not yet current: 20191201T001000Z is still later than ...";
        let off = clock_offset_from_response(
            403,
            body,
            Some("Sun, 01 Dec 2019 00:00:00 GMT"),
            at(1_575_158_400 + 600),
        )
        .unwrap();
        assert_eq!(off.millis, -600_000);
        assert_eq!(off.apply(at(1_575_158_400 + 600)), at(1_575_158_400));
    }

    #[test]
    fn other_responses_give_no_offset() {
        let date = Some("Sun, 01 Dec 2019 00:00:00 GMT");
        assert!(clock_offset_from_response(403, "AccessDenied", date, at(0)).is_none());
        assert!(clock_offset_from_response(400, "Signature expired", date, at(0)).is_none());
        assert!(clock_offset_from_response(403, "Signature expired", None, at(0)).is_none());
        assert!(
            clock_offset_from_response(403, "Signature expired", Some("garbage"), at(0)).is_none()
        );
        assert_eq!(ClockOffset::ZERO.apply(at(5)), at(5));
    }
}
