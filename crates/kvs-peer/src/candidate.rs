//! Turning signaled ICE candidate strings (remote input) into str0m candidates.

use str0m::Candidate;

/// Result of reading one signaled candidate.
#[derive(Debug)]
pub enum ParsedCandidate {
    /// A candidate to add.
    Candidate(Candidate),
    /// Valid but not usable here: end-of-candidates, mDNS `.local`, TCP. The string says why.
    Ignored(&'static str),
}

/// Parse `RTCIceCandidate.candidate` (with or without `a=` / `candidate:`). Never panics.
pub fn parse_candidate(input: &str) -> Result<ParsedCandidate, String> {
    let s = input.trim();
    let s = s.strip_prefix("a=").unwrap_or(s);
    if s.is_empty() {
        return Ok(ParsedCandidate::Ignored("end of candidates"));
    }
    let body = s.strip_prefix("candidate:").unwrap_or(s);
    let fields: Vec<&str> = body.split_ascii_whitespace().collect();
    if fields.len() < 8 {
        return Err(format!("too few fields in candidate {s:?}"));
    }
    if fields[4].to_ascii_lowercase().ends_with(".local") {
        // Browsers hide host addresses behind mDNS names; connectivity comes through
        // peer-reflexive candidates learned from their STUN checks.
        return Ok(ParsedCandidate::Ignored("mDNS .local candidate"));
    }
    if !fields[2].eq_ignore_ascii_case("udp") {
        return Ok(ParsedCandidate::Ignored("non-UDP candidate"));
    }
    let line = format!("candidate:{body}");
    Candidate::from_sdp_string(&line)
        .map(ParsedCandidate::Candidate)
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_with_and_without_prefix() {
        for s in [
            "candidate:1 1 udp 2113929471 127.0.0.1 5000 typ host",
            "1 1 udp 2113929471 127.0.0.1 5000 typ host",
            "a=candidate:1 1 UDP 2113929471 127.0.0.1 5000 typ host generation 0",
        ] {
            match parse_candidate(s) {
                Ok(ParsedCandidate::Candidate(c)) => {
                    assert_eq!(c.addr(), "127.0.0.1:5000".parse().unwrap())
                }
                other => panic!("{s}: {other:?}"),
            }
        }
    }

    #[test]
    fn ignores_mdns_tcp_and_end_of_candidates() {
        let mdns = "candidate:1 1 udp 2113929471 4f1c-aa.local 5000 typ host";
        assert!(matches!(
            parse_candidate(mdns),
            Ok(ParsedCandidate::Ignored(_))
        ));
        let tcp = "candidate:1 1 tcp 2113929471 127.0.0.1 9 typ host tcptype active";
        assert!(matches!(
            parse_candidate(tcp),
            Ok(ParsedCandidate::Ignored(_))
        ));
        assert!(matches!(
            parse_candidate(""),
            Ok(ParsedCandidate::Ignored(_))
        ));
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse_candidate("candidate:1 1 udp").is_err());
        assert!(parse_candidate("candidate:1 1 udp x 1.2.3.4 70000 typ host").is_err());
        assert!(parse_candidate("\u{0}\u{1} ÿ udp ÿ ÿ ÿ ÿ ÿ").is_err());
    }
}
