//! The KVS control plane as pure functions: request bodies out, typed answers in.
//!
//! Owns: the JSON shapes of DescribeSignalingChannel, CreateSignalingChannel,
//! GetSignalingChannelEndpoint and GetIceServerConfig (botocore `kinesisvideo` 2017-09-30 and
//! `kinesis-video-signaling` 2019-12-04), the rest-json error convention (`x-amzn-ErrorType`
//! header, `message` body), the endpoint host names per region (FIPS, dual-stack, China), the
//! regional STUN URL, and the C SDK's limits on ICE server lists.
//!
//! Must not touch: the network, signing, retries or caching (see [`super::client`]).
//! Everything here is fed bytes a remote party chose, so nothing panics and every list read is
//! bounded.

use std::time::Duration;

use serde::Deserialize;
use serde_json::json;

use crate::ice::IceServer;

/// Largest control-plane answer we read.
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// The C SDK's limits: at most 5 ICE servers in all, 4 URIs each, URIs ≤ 256 characters,
/// usernames and credentials ≤ 256 characters.
pub const MAX_ICE_SERVERS: usize = 5;
pub const MAX_URIS_PER_SERVER: usize = 4;
pub const MAX_ICE_URI_LEN: usize = 256;
pub const MAX_ICE_CREDENTIAL_LEN: usize = 256;
/// KVS clients ignore TURN entries whose TTL is this short or shorter.
pub const MIN_ICE_TTL: Duration = Duration::from_secs(30);

/// Operation paths, relative to the control-plane endpoint (the ICE one to the channel's
/// HTTPS endpoint).
pub const DESCRIBE_PATH: &str = "/describeSignalingChannel";
pub const CREATE_PATH: &str = "/createSignalingChannel";
pub const GET_ENDPOINT_PATH: &str = "/getSignalingChannelEndpoint";
pub const GET_ICE_PATH: &str = "/v1/get-ice-server-config";

/// A control-plane refusal in the rest-json convention.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{operation} failed with HTTP {status} {error_type}: {message}")]
pub struct ApiError {
    pub operation: &'static str,
    pub status: u16,
    /// E.g. `ResourceNotFoundException` (empty when the service named none).
    pub error_type: String,
    pub message: String,
}

impl ApiError {
    /// Reads an error answer: the type from `x-amzn-ErrorType` (its part before `:`), else the
    /// body's `__type`/`code`; the message from `message`/`Message`, else the body's text.
    pub fn from_answer(
        operation: &'static str,
        status: u16,
        error_type_header: Option<&str>,
        body: &[u8],
    ) -> Self {
        #[derive(Deserialize, Default)]
        struct Body {
            #[serde(alias = "Message")]
            message: Option<String>,
            #[serde(rename = "__type", alias = "code", alias = "Code")]
            error_type: Option<String>,
        }
        let parsed: Body = serde_json::from_slice(body).unwrap_or_default();
        let error_type = error_type_header
            .map(str::to_string)
            .or(parsed.error_type)
            .unwrap_or_default();
        // `x-amzn-ErrorType: Name:http://internal.amazon.com/...` and `aws.protocol#Name`.
        let error_type = error_type
            .split(':')
            .next()
            .unwrap_or_default()
            .rsplit('#')
            .next()
            .unwrap_or_default()
            .chars()
            .take(128)
            .collect();
        let message = parsed
            .message
            .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned());
        ApiError {
            operation,
            status,
            error_type,
            message: message.chars().take(512).collect(),
        }
    }

    /// The channel (or an endpoint's resource) does not exist.
    pub fn is_not_found(&self) -> bool {
        self.status == 404 || self.error_type == "ResourceNotFoundException"
    }

    /// The credentials or signature were refused: retrying with the same ones cannot help.
    pub fn is_auth_failure(&self) -> bool {
        matches!(self.status, 401 | 403)
    }
}

/// An answer that is not in the documented shape.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{operation}: unexpected answer: {reason}")]
pub struct ShapeError {
    pub operation: &'static str,
    pub reason: String,
}

fn shape(operation: &'static str, reason: impl Into<String>) -> ShapeError {
    ShapeError {
        operation,
        reason: reason.into(),
    }
}

/// Which channel to use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChannelRef {
    Name(String),
    Arn(String),
}

/// The channel as DescribeSignalingChannel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelDescription {
    pub name: String,
    pub arn: String,
    /// `CREATING`, `ACTIVE`, `UPDATING`, `DELETING`.
    pub status: String,
}

/// Where a role reaches its channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelEndpoints {
    /// The data plane, `wss://…`.
    pub wss: String,
    /// The signaling REST endpoint (GetIceServerConfig), `https://…`.
    pub https: String,
}

/// The role named in GetSignalingChannelEndpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndpointRole {
    Master,
    Viewer,
}

impl EndpointRole {
    fn as_str(self) -> &'static str {
        match self {
            EndpointRole::Master => "MASTER",
            EndpointRole::Viewer => "VIEWER",
        }
    }
}

/// DescribeSignalingChannel's body.
pub fn describe_request(channel: &ChannelRef) -> String {
    match channel {
        ChannelRef::Name(n) => json!({ "ChannelName": n }),
        ChannelRef::Arn(a) => json!({ "ChannelARN": a }),
    }
    .to_string()
}

/// CreateSignalingChannel's body (SINGLE_MASTER, the given message TTL).
pub fn create_request(name: &str, message_ttl: Duration) -> String {
    json!({
        "ChannelName": name,
        "ChannelType": "SINGLE_MASTER",
        "SingleMasterConfiguration": { "MessageTtlSeconds": message_ttl.as_secs() },
    })
    .to_string()
}

/// GetSignalingChannelEndpoint's body, asking for WSS and HTTPS.
pub fn endpoint_request(channel_arn: &str, role: EndpointRole) -> String {
    json!({
        "ChannelARN": channel_arn,
        "SingleMasterChannelEndpointConfiguration": {
            "Protocols": ["WSS", "HTTPS"],
            "Role": role.as_str(),
        },
    })
    .to_string()
}

/// GetIceServerConfig's body. Viewers name themselves; the master sends no client id.
pub fn ice_request(channel_arn: &str, client_id: Option<&str>) -> String {
    let mut body = json!({ "ChannelARN": channel_arn, "Service": "TURN" });
    if let Some(id) = client_id {
        body["ClientId"] = json!(id);
    }
    body.to_string()
}

/// Reads DescribeSignalingChannel's answer.
pub fn parse_describe(body: &[u8]) -> Result<ChannelDescription, ShapeError> {
    const OP: &str = "DescribeSignalingChannel";
    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Answer {
        channel_info: Option<Info>,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Info {
        channel_name: Option<String>,
        #[serde(rename = "ChannelARN")]
        channel_arn: Option<String>,
        channel_status: Option<String>,
    }
    let a: Answer = serde_json::from_slice(body).map_err(|e| shape(OP, e.to_string()))?;
    let info = a.channel_info.ok_or_else(|| shape(OP, "no ChannelInfo"))?;
    let arn = info
        .channel_arn
        .filter(|a| !a.is_empty())
        .ok_or_else(|| shape(OP, "no ChannelARN"))?;
    Ok(ChannelDescription {
        name: info.channel_name.unwrap_or_default(),
        arn,
        status: info.channel_status.unwrap_or_else(|| "ACTIVE".into()),
    })
}

/// Reads CreateSignalingChannel's answer: the new channel's ARN.
pub fn parse_create(body: &[u8]) -> Result<String, ShapeError> {
    const OP: &str = "CreateSignalingChannel";
    #[derive(Deserialize)]
    struct Answer {
        #[serde(rename = "ChannelARN")]
        channel_arn: Option<String>,
    }
    let a: Answer = serde_json::from_slice(body).map_err(|e| shape(OP, e.to_string()))?;
    a.channel_arn
        .filter(|a| !a.is_empty())
        .ok_or_else(|| shape(OP, "no ChannelARN"))
}

/// Reads GetSignalingChannelEndpoint's answer; both WSS and HTTPS must be present.
pub fn parse_endpoints(body: &[u8]) -> Result<ChannelEndpoints, ShapeError> {
    const OP: &str = "GetSignalingChannelEndpoint";
    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Answer {
        resource_endpoint_list: Option<Vec<Entry>>,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Entry {
        protocol: Option<String>,
        resource_endpoint: Option<String>,
    }
    let a: Answer = serde_json::from_slice(body).map_err(|e| shape(OP, e.to_string()))?;
    let list = a.resource_endpoint_list.unwrap_or_default();
    let find = |protocol: &str| {
        list.iter()
            .find(|e| e.protocol.as_deref() == Some(protocol))
            .and_then(|e| e.resource_endpoint.clone())
            .filter(|e| !e.is_empty())
    };
    let wss = find("WSS").ok_or_else(|| shape(OP, "no WSS endpoint"))?;
    let https = find("HTTPS").ok_or_else(|| shape(OP, "no HTTPS endpoint"))?;
    if !(wss.starts_with("wss://") || wss.starts_with("ws://")) {
        return Err(shape(OP, format!("WSS endpoint is not a ws(s) URL: {wss}")));
    }
    if !(https.starts_with("https://") || https.starts_with("http://")) {
        return Err(shape(
            OP,
            format!("HTTPS endpoint is not an http(s) URL: {https}"),
        ));
    }
    Ok(ChannelEndpoints { wss, https })
}

/// Reads GetIceServerConfig's answer into at most `max_servers` servers, dropping entries the
/// C SDK would refuse (no URIs, over-long fields, a TTL of 30 s or less) and URIs past the
/// fourth. An empty list is a valid answer (STUN only).
pub fn parse_ice_servers(body: &[u8], max_servers: usize) -> Result<Vec<IceServer>, ShapeError> {
    const OP: &str = "GetIceServerConfig";
    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Answer {
        ice_server_list: Option<Vec<Entry>>,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Entry {
        uris: Option<Vec<String>>,
        username: Option<String>,
        password: Option<String>,
        ttl: Option<u64>,
    }
    let a: Answer = serde_json::from_slice(body).map_err(|e| shape(OP, e.to_string()))?;
    let servers = a
        .ice_server_list
        .unwrap_or_default()
        .into_iter()
        .filter_map(|e| {
            let uris: Vec<String> = e
                .uris
                .unwrap_or_default()
                .into_iter()
                .filter(|u| !u.is_empty() && u.len() <= MAX_ICE_URI_LEN)
                .take(MAX_URIS_PER_SERVER)
                .collect();
            let ttl = Duration::from_secs(e.ttl.unwrap_or(0));
            let too_long =
                |s: &Option<String>| s.as_ref().is_some_and(|s| s.len() > MAX_ICE_CREDENTIAL_LEN);
            if uris.is_empty()
                || ttl <= MIN_ICE_TTL
                || too_long(&e.username)
                || too_long(&e.password)
            {
                return None;
            }
            Some(IceServer {
                urls: uris,
                username: e.username,
                credential: e.password,
                ttl: Some(ttl),
            })
        })
        .take(max_servers)
        .collect();
    Ok(servers)
}

/// How the control-plane host is chosen for a region.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EndpointFlavour {
    pub fips: bool,
    pub dual_stack: bool,
}

/// `https://kinesisvideo[-fips].<region>.(amazonaws.com|api.aws)`, `.amazonaws.com.cn` in
/// China.
pub fn control_plane_endpoint(region: &str, flavour: EndpointFlavour) -> String {
    let service = if flavour.fips {
        "kinesisvideo-fips"
    } else {
        "kinesisvideo"
    };
    format!("https://{service}.{region}.{}", dns_suffix(region, flavour))
}

/// The regional STUN server KVS clients use:
/// `stun:stun.kinesisvideo.<region>.(amazonaws.com|api.aws):443`.
pub fn stun_url(region: &str, flavour: EndpointFlavour) -> String {
    let flavour = EndpointFlavour {
        fips: false,
        ..flavour
    };
    format!(
        "stun:stun.kinesisvideo.{region}.{}:443",
        dns_suffix(region, flavour)
    )
}

fn dns_suffix(region: &str, flavour: EndpointFlavour) -> &'static str {
    match (region.starts_with("cn-"), flavour.dual_stack) {
        (true, false) => "amazonaws.com.cn",
        (true, true) => "api.amazonwebservices.com.cn",
        (false, false) => "amazonaws.com",
        (false, true) => "api.aws",
    }
}

/// A region name as AWS spells them: lower-case letters, digits and `-`.
pub fn is_valid_region(region: &str) -> bool {
    !region.is_empty()
        && region.len() <= 32
        && region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !region.starts_with('-')
        && !region.ends_with('-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_have_the_model_shapes() {
        let v: serde_json::Value =
            serde_json::from_str(&describe_request(&ChannelRef::Name("cam".into()))).unwrap();
        assert_eq!(v, json!({"ChannelName": "cam"}));
        let v: serde_json::Value =
            serde_json::from_str(&endpoint_request("arn:x", EndpointRole::Viewer)).unwrap();
        assert_eq!(
            v,
            json!({"ChannelARN": "arn:x", "SingleMasterChannelEndpointConfiguration": {"Protocols": ["WSS", "HTTPS"], "Role": "VIEWER"}})
        );
        let v: serde_json::Value =
            serde_json::from_str(&create_request("cam", Duration::from_secs(60))).unwrap();
        assert_eq!(v["SingleMasterConfiguration"]["MessageTtlSeconds"], 60);
        let v: serde_json::Value = serde_json::from_str(&ice_request("arn:x", None)).unwrap();
        assert_eq!(v, json!({"ChannelARN": "arn:x", "Service": "TURN"}));
        let v: serde_json::Value = serde_json::from_str(&ice_request("arn:x", Some("v1"))).unwrap();
        assert_eq!(v["ClientId"], "v1");
    }

    #[test]
    fn answers_parse_and_bad_ones_are_errors() {
        let d = parse_describe(br#"{"ChannelInfo":{"ChannelName":"cam","ChannelARN":"arn:aws:kinesisvideo:us-west-2:111122223333:channel/cam/1700000000000","ChannelStatus":"ACTIVE"}}"#).unwrap();
        assert_eq!(d.name, "cam");
        assert_eq!(d.status, "ACTIVE");
        assert!(parse_describe(b"{}").is_err());
        assert!(parse_describe(br#"{"ChannelInfo":{"ChannelARN":""}}"#).is_err());
        assert!(parse_describe(b"not json").is_err());
        assert_eq!(parse_create(br#"{"ChannelARN":"arn:1"}"#).unwrap(), "arn:1");
        assert!(parse_create(br#"{"ChannelARN":7}"#).is_err());

        let e = parse_endpoints(br#"{"ResourceEndpointList":[{"Protocol":"HTTPS","ResourceEndpoint":"https://r-1.kinesisvideo.us-west-2.amazonaws.com"},{"Protocol":"WSS","ResourceEndpoint":"wss://m-1.kinesisvideo.us-west-2.amazonaws.com"}]}"#).unwrap();
        assert_eq!(e.wss, "wss://m-1.kinesisvideo.us-west-2.amazonaws.com");
        assert_eq!(e.https, "https://r-1.kinesisvideo.us-west-2.amazonaws.com");
        // Clients need both: one missing is an error, as is a wrong scheme.
        assert!(parse_endpoints(
            br#"{"ResourceEndpointList":[{"Protocol":"WSS","ResourceEndpoint":"wss://m"}]}"#
        )
        .is_err());
        assert!(parse_endpoints(br#"{"ResourceEndpointList":[{"Protocol":"WSS","ResourceEndpoint":"ftp://m"},{"Protocol":"HTTPS","ResourceEndpoint":"https://r"}]}"#).is_err());
    }

    #[test]
    fn ice_lists_are_bounded_like_the_c_sdk() {
        let long = "x".repeat(300);
        let body = json!({"IceServerList": [
            {"Uris": ["turn:a:443?transport=udp", "turns:a:443?transport=tcp", "turn:b", "turn:c", "turn:d"], "Username": "1700000300:u", "Password": "p", "Ttl": 300},
            {"Uris": [], "Username": "u", "Password": "p", "Ttl": 300},
            {"Uris": ["turn:short-ttl"], "Username": "u", "Password": "p", "Ttl": 30},
            {"Uris": ["turn:long-user"], "Username": long, "Password": "p", "Ttl": 300},
            {"Uris": ["turn:e"], "Username": "u", "Password": "p", "Ttl": 300},
            {"Uris": ["turn:f"], "Username": "u", "Password": "p", "Ttl": 300},
        ]})
        .to_string();
        let servers = parse_ice_servers(body.as_bytes(), 2).unwrap();
        assert_eq!(servers.len(), 2);
        assert_eq!(servers[0].urls.len(), 4);
        assert_eq!(servers[0].ttl, Some(Duration::from_secs(300)));
        assert_eq!(servers[1].urls, vec!["turn:e".to_string()]);
        assert!(parse_ice_servers(br#"{"IceServerList":[]}"#, 5)
            .unwrap()
            .is_empty());
        assert!(parse_ice_servers(br#"{"IceServerList":"x"}"#, 5).is_err());
    }

    #[test]
    fn errors_read_header_or_body() {
        let e = ApiError::from_answer(
            "DescribeSignalingChannel",
            404,
            Some("ResourceNotFoundException:http://internal.amazon.com/coral/com.amazon.kinesisvideo.v20170930/"),
            br#"{"Message":"The requested channel is not found or not active."}"#,
        );
        assert_eq!(e.error_type, "ResourceNotFoundException");
        assert!(e.is_not_found());
        assert!(e.message.contains("not found"));
        let e = ApiError::from_answer(
            "X",
            403,
            None,
            br#"{"__type":"aws#AccessDeniedException","message":"no"}"#,
        );
        assert_eq!(e.error_type, "AccessDeniedException");
        assert!(e.is_auth_failure());
        let e = ApiError::from_answer("X", 500, None, b"<html>oops</html>");
        assert_eq!(e.error_type, "");
        assert_eq!(e.message, "<html>oops</html>");
    }

    #[test]
    fn endpoints_per_region_and_flavour() {
        let plain = EndpointFlavour::default();
        assert_eq!(
            control_plane_endpoint("us-west-2", plain),
            "https://kinesisvideo.us-west-2.amazonaws.com"
        );
        let fips = EndpointFlavour {
            fips: true,
            dual_stack: false,
        };
        assert_eq!(
            control_plane_endpoint("us-east-1", fips),
            "https://kinesisvideo-fips.us-east-1.amazonaws.com"
        );
        let dual = EndpointFlavour {
            fips: false,
            dual_stack: true,
        };
        assert_eq!(
            control_plane_endpoint("eu-west-1", dual),
            "https://kinesisvideo.eu-west-1.api.aws"
        );
        assert_eq!(
            control_plane_endpoint("cn-north-1", plain),
            "https://kinesisvideo.cn-north-1.amazonaws.com.cn"
        );
        assert_eq!(
            stun_url("us-west-2", plain),
            "stun:stun.kinesisvideo.us-west-2.amazonaws.com:443"
        );
        assert_eq!(
            stun_url("us-west-2", dual),
            "stun:stun.kinesisvideo.us-west-2.api.aws:443"
        );
        assert!(is_valid_region("ap-southeast-2"));
        for bad in ["", "US-WEST-2", "us west", "-x", "a/b"] {
            assert!(!is_valid_region(bad), "{bad}");
        }
    }
}
