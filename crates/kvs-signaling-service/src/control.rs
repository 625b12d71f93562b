//! The sans-IO REST control plane of the local service (rest-json, SigV4 service `kinesisvideo`).
//!
//! Owns: parsing the JSON bodies of CreateSignalingChannel, DescribeSignalingChannel,
//! ListSignalingChannels, DeleteSignalingChannel, GetSignalingChannelEndpoint and
//! GetIceServerConfig, validating them the way KVS does, applying them to the
//! [`RoutingCore`]'s channel registry, and rendering the responses and rest-json errors
//! (`x-amzn-ErrorType` + `{"message"}`) with the real service's status codes.
//!
//! Must not touch: HTTP framing, sockets, clocks, authentication (the edge in
//! [`crate::server`] verifies SigV4 first and passes the time in).
//! Shapes: `docs/KVS-SIGNALING.md` §1 (from the botocore `kinesisvideo` model).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use serde_json::{json, Value};

use crate::routing::{ChannelError, ChannelInfo, RoutingCore, MESSAGE_TTL_RANGE};
use crate::turn::{mint_turn_credentials, IceServerSettings};

/// Largest control-plane request body we read (the real model's largest request is a few KB).
pub const MAX_CONTROL_BODY_BYTES: usize = 64 * 1024;
/// ListSignalingChannels' `MaxResults` range and default.
const LIST_MAX_RESULTS: usize = 10_000;
const LIST_DEFAULT_RESULTS: usize = 10_000;
/// Tags a channel may carry (KVS: 50).
const MAX_TAGS: usize = 50;

/// The control-plane operations, by their request path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    CreateSignalingChannel,
    DescribeSignalingChannel,
    ListSignalingChannels,
    DeleteSignalingChannel,
    GetSignalingChannelEndpoint,
    /// On the HTTPS endpoint: `/v1/get-ice-server-config`.
    GetIceServerConfig,
}

impl Operation {
    /// The operation served at `path` (paths are case-sensitive, as in KVS).
    pub fn from_path(path: &str) -> Option<Self> {
        Some(match path {
            "/createSignalingChannel" => Self::CreateSignalingChannel,
            "/describeSignalingChannel" => Self::DescribeSignalingChannel,
            "/listSignalingChannels" => Self::ListSignalingChannels,
            "/deleteSignalingChannel" => Self::DeleteSignalingChannel,
            "/getSignalingChannelEndpoint" => Self::GetSignalingChannelEndpoint,
            "/v1/get-ice-server-config" => Self::GetIceServerConfig,
            _ => return None,
        })
    }

    /// Every path served, for the router.
    pub const PATHS: [&'static str; 6] = [
        "/createSignalingChannel",
        "/describeSignalingChannel",
        "/listSignalingChannels",
        "/deleteSignalingChannel",
        "/getSignalingChannelEndpoint",
        "/v1/get-ice-server-config",
    ];
}

/// A rendered response: status, error type (for `x-amzn-ErrorType`) and JSON body.
#[derive(Debug, Clone, PartialEq)]
pub struct ControlResponse {
    pub status: u16,
    /// Set on errors; the edge writes it into `x-amzn-ErrorType`.
    pub error_type: Option<&'static str>,
    pub body: Value,
}

impl ControlResponse {
    fn ok(body: Value) -> Self {
        ControlResponse {
            status: 200,
            error_type: None,
            body,
        }
    }

    /// A rest-json error: `{"message": …}` with the given status and error type.
    pub fn error(status: u16, error_type: &'static str, message: impl Into<String>) -> Self {
        ControlResponse {
            status,
            error_type: Some(error_type),
            body: json!({ "message": message.into() }),
        }
    }

    fn invalid(message: impl Into<String>) -> Self {
        Self::error(400, "InvalidArgumentException", message)
    }

    fn not_found(message: impl Into<String>) -> Self {
        Self::error(404, "ResourceNotFoundException", message)
    }
}

/// Where clients reach this service, as the edge saw the request arrive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    /// The data plane, e.g. `wss://127.0.0.1:8443` (no trailing slash, as KVS).
    pub wss: String,
    /// The HTTPS endpoint for GetIceServerConfig, e.g. `https://127.0.0.1:8443`.
    pub https: String,
}

/// What one control-plane call needs besides its body.
#[derive(Debug, Clone, Copy)]
pub struct ControlContext<'a> {
    pub now: SystemTime,
    pub endpoints: &'a Endpoints,
    pub ice: &'a IceServerSettings,
}

/// What a successful call changed, so the edge can persist it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    None,
    Created(ChannelInfo),
    Deleted(ChannelInfo),
}

/// The answer to a path that is no operation.
pub fn unknown_operation() -> ControlResponse {
    ControlResponse::error(404, "UnknownOperationException", "unknown operation")
}

/// The answer to an operation path called with another method than POST (`/` is the
/// WebSocket data plane: GET).
pub fn method_not_allowed(method: &str, path: &str) -> ControlResponse {
    let allowed = if path == "/" {
        "GET (a WebSocket upgrade)"
    } else {
        "POST"
    };
    // The method is echoed only if it is a plain token, and short.
    let shown = if !method.is_empty()
        && method.len() <= 16
        && method.bytes().all(|b| b.is_ascii_alphabetic())
    {
        method
    } else {
        "this method"
    };
    ControlResponse::error(
        405,
        "UnknownOperationException",
        format!("{shown} is not served at this path; use {allowed}"),
    )
}

/// The answer to a body over [`MAX_CONTROL_BODY_BYTES`].
pub fn body_too_large() -> ControlResponse {
    ControlResponse::error(
        413,
        "InvalidArgumentException",
        format!("request body exceeds {MAX_CONTROL_BODY_BYTES} bytes"),
    )
}

/// Routes one raw control-plane request (method, path without the query, body) and runs it:
/// unknown paths, other methods than POST and oversized bodies get their rest-json errors
/// here, so the HTTP edge and this function answer alike.
pub fn route(
    core: &mut RoutingCore,
    method: &str,
    path: &str,
    body: &[u8],
    ctx: &ControlContext<'_>,
) -> (ControlResponse, Change) {
    let Some(op) = Operation::from_path(path) else {
        return (unknown_operation(), Change::None);
    };
    if method != "POST" {
        return (method_not_allowed(method, path), Change::None);
    }
    if body.len() > MAX_CONTROL_BODY_BYTES {
        return (body_too_large(), Change::None);
    }
    handle(core, op, body, ctx)
}

/// Runs one control-plane call against `core`.
pub fn handle(
    core: &mut RoutingCore,
    op: Operation,
    body: &[u8],
    ctx: &ControlContext<'_>,
) -> (ControlResponse, Change) {
    if body.len() > MAX_CONTROL_BODY_BYTES {
        return (
            ControlResponse::invalid("request body is too large"),
            Change::None,
        );
    }
    // An empty body counts as `{}` (the SDKs send `{}`, curl users often send nothing).
    let body: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        body
    };
    let result = match op {
        Operation::CreateSignalingChannel => parse(body).map(|r| create(core, r, ctx)),
        Operation::DescribeSignalingChannel => parse(body).map(|r| describe(core, r)),
        Operation::ListSignalingChannels => parse(body).map(|r| list(core, r)),
        Operation::DeleteSignalingChannel => parse(body).map(|r| delete(core, r)),
        Operation::GetSignalingChannelEndpoint => parse(body).map(|r| endpoint(core, r, ctx)),
        Operation::GetIceServerConfig => parse(body).map(|r| ice_config(core, r, ctx)),
    };
    result.unwrap_or_else(|e| (e, Change::None))
}

fn parse<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, ControlResponse> {
    serde_json::from_slice(body).map_err(|e| {
        // serde's message names the field and the expected type; it never echoes the body.
        ControlResponse::error(
            400,
            "SerializationException",
            format!("invalid request body: {e}"),
        )
    })
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct CreateRequest {
    channel_name: String,
    channel_type: Option<String>,
    single_master_configuration: Option<SingleMasterConfiguration>,
    tags: Option<Vec<Tag>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct SingleMasterConfiguration {
    message_ttl_seconds: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Tag {
    key: String,
    #[allow(dead_code)] // validated by type only; tags are not stored
    value: String,
}

fn create(
    core: &mut RoutingCore,
    req: CreateRequest,
    ctx: &ControlContext<'_>,
) -> (ControlResponse, Change) {
    match req.channel_type.as_deref() {
        None | Some("SINGLE_MASTER") => {}
        Some("FULL_MESH") => {
            return (
                ControlResponse::invalid("ChannelType FULL_MESH is not supported"),
                Change::None,
            )
        }
        Some(_) => {
            return (
                ControlResponse::invalid("ChannelType must be SINGLE_MASTER or FULL_MESH"),
                Change::None,
            )
        }
    }
    let ttl_secs = req
        .single_master_configuration
        .and_then(|c| c.message_ttl_seconds)
        .unwrap_or(core.config().message_ttl.as_secs() as i64);
    let ttl = match u64::try_from(ttl_secs) {
        Ok(s) if MESSAGE_TTL_RANGE.contains(&s) => Duration::from_secs(s),
        _ => {
            return (
                ControlResponse::invalid("MessageTtlSeconds must be between 5 and 120"),
                Change::None,
            )
        }
    };
    if let Some(tags) = &req.tags {
        if tags.len() > MAX_TAGS {
            return (
                ControlResponse::error(
                    400,
                    "TagsPerResourceExceededLimitException",
                    "too many tags",
                ),
                Change::None,
            );
        }
        if tags.iter().any(|t| t.key.is_empty() || t.key.len() > 128) {
            return (
                ControlResponse::invalid("tag keys must be 1 to 128 characters"),
                Change::None,
            );
        }
    }
    match core.create_channel_with_ttl(&req.channel_name, ttl, ctx.now) {
        Ok(info) => (
            ControlResponse::ok(json!({ "ChannelARN": info.arn })),
            Change::Created(info),
        ),
        Err(e) => (channel_error(e), Change::None),
    }
}

fn channel_error(e: ChannelError) -> ControlResponse {
    match &e {
        ChannelError::AlreadyExists(_) => {
            ControlResponse::error(400, "ResourceInUseException", e.to_string())
        }
        ChannelError::NotFound(_) => ControlResponse::not_found(e.to_string()),
        ChannelError::VersionMismatch { .. } => {
            ControlResponse::error(400, "VersionMismatchException", e.to_string())
        }
        ChannelError::InvalidName(_) | ChannelError::InvalidTtl => {
            ControlResponse::invalid(e.to_string())
        }
        // The real service's error for an account at its channel limit.
        ChannelError::LimitExceeded { .. } => {
            ControlResponse::error(400, "AccountChannelLimitExceededException", e.to_string())
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DescribeRequest {
    channel_name: Option<String>,
    #[serde(rename = "ChannelARN")]
    channel_arn: Option<String>,
}

/// Finds a channel by exactly one of name or ARN, as KVS requires.
fn lookup(
    core: &RoutingCore,
    name: Option<&str>,
    arn: Option<&str>,
) -> Result<ChannelInfo, ControlResponse> {
    match (name, arn) {
        (Some(_), Some(_)) => Err(ControlResponse::invalid(
            "specify either ChannelName or ChannelARN, not both",
        )),
        (None, None) => Err(ControlResponse::invalid(
            "ChannelName or ChannelARN is required",
        )),
        (Some(name), None) => core.channel_by_name(name).ok_or_else(|| {
            ControlResponse::not_found(format!(
                "The requested channel is not found or not active: {name}"
            ))
        }),
        (None, Some(arn)) => core.channel_by_arn(arn).ok_or_else(|| {
            ControlResponse::not_found(format!(
                "The requested channel is not found or not active: {arn}"
            ))
        }),
    }
}

/// A channel in the model's `ChannelInfo` shape. `CreationTime` is epoch seconds, the
/// rest-json timestamp format.
pub fn channel_info_json(info: &ChannelInfo) -> Value {
    let created = info
        .created_at
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as f64
        / 1000.0;
    json!({
        "ChannelName": info.name,
        "ChannelARN": info.arn,
        "ChannelType": "SINGLE_MASTER",
        "ChannelStatus": "ACTIVE",
        "CreationTime": created,
        "SingleMasterConfiguration": { "MessageTtlSeconds": info.message_ttl.as_secs() },
        "Version": info.version,
    })
}

fn describe(core: &mut RoutingCore, req: DescribeRequest) -> (ControlResponse, Change) {
    match lookup(
        core,
        req.channel_name.as_deref(),
        req.channel_arn.as_deref(),
    ) {
        Ok(info) => (
            ControlResponse::ok(json!({ "ChannelInfo": channel_info_json(&info) })),
            Change::None,
        ),
        Err(e) => (e, Change::None),
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListRequest {
    max_results: Option<i64>,
    next_token: Option<String>,
    channel_name_condition: Option<NameCondition>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct NameCondition {
    comparison_operator: Option<String>,
    comparison_value: Option<String>,
}

fn list(core: &mut RoutingCore, req: ListRequest) -> (ControlResponse, Change) {
    let max = match req.max_results {
        None => LIST_DEFAULT_RESULTS,
        Some(n) if (1..=LIST_MAX_RESULTS as i64).contains(&n) => n as usize,
        Some(_) => {
            return (
                ControlResponse::invalid("MaxResults must be between 1 and 10000"),
                Change::None,
            )
        }
    };
    let prefix = match req.channel_name_condition {
        None => None,
        Some(c) => {
            if c.comparison_operator.as_deref().unwrap_or("BEGINS_WITH") != "BEGINS_WITH" {
                return (
                    ControlResponse::invalid("ComparisonOperator must be BEGINS_WITH"),
                    Change::None,
                );
            }
            c.comparison_value
        }
    };
    let mut channels = core.channels();
    channels.sort_by(|a, b| a.name.cmp(&b.name));
    if let Some(p) = &prefix {
        channels.retain(|c| c.name.starts_with(p.as_str()));
    }
    // The token is the name to continue from; channel names never contain ':' so a token
    // that does is not ours.
    let start = match &req.next_token {
        None => 0,
        Some(t) => match t.strip_prefix("after:") {
            Some(after) => channels.partition_point(|c| c.name.as_str() <= after),
            None => {
                return (
                    ControlResponse::invalid("NextToken is not valid"),
                    Change::None,
                )
            }
        },
    };
    let page: Vec<&ChannelInfo> = channels.iter().skip(start).take(max).collect();
    let mut body = json!({
        "ChannelInfoList": page.iter().map(|c| channel_info_json(c)).collect::<Vec<_>>(),
    });
    if start + page.len() < channels.len() {
        if let Some(last) = page.last() {
            body["NextToken"] = json!(format!("after:{}", last.name));
        }
    }
    (ControlResponse::ok(body), Change::None)
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DeleteRequest {
    #[serde(rename = "ChannelARN")]
    channel_arn: String,
    current_version: Option<String>,
}

fn delete(core: &mut RoutingCore, req: DeleteRequest) -> (ControlResponse, Change) {
    match core.delete_channel(&req.channel_arn, req.current_version.as_deref()) {
        Ok(info) => (ControlResponse::ok(json!({})), Change::Deleted(info)),
        Err(e) => (channel_error(e), Change::None),
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct EndpointRequest {
    #[serde(rename = "ChannelARN")]
    channel_arn: String,
    single_master_channel_endpoint_configuration: Option<EndpointConfiguration>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct EndpointConfiguration {
    protocols: Option<Vec<String>>,
    role: Option<String>,
}

fn endpoint(
    core: &mut RoutingCore,
    req: EndpointRequest,
    ctx: &ControlContext<'_>,
) -> (ControlResponse, Change) {
    if let Err(e) = lookup(core, None, Some(&req.channel_arn)) {
        return (e, Change::None);
    }
    let config = req.single_master_channel_endpoint_configuration;
    let (protocols, role) = match config {
        Some(c) => (c.protocols, c.role),
        None => (None, None),
    };
    match role.as_deref() {
        None | Some("MASTER") | Some("VIEWER") => {}
        Some(_) => {
            return (
                ControlResponse::invalid("Role must be MASTER or VIEWER"),
                Change::None,
            )
        }
    }
    let protocols = protocols.unwrap_or_else(|| vec!["WSS".into(), "HTTPS".into()]);
    if protocols.is_empty() || protocols.len() > 5 {
        return (
            ControlResponse::invalid("Protocols must list 1 to 5 protocols"),
            Change::None,
        );
    }
    let mut list = Vec::new();
    for p in &protocols {
        let endpoint =
            match p.as_str() {
                "WSS" => &ctx.endpoints.wss,
                "HTTPS" => &ctx.endpoints.https,
                // Storage sessions (WebRTC ingestion) are not offered by the local service.
                "WEBRTC" => return (
                    ControlResponse::invalid(
                        "the WEBRTC protocol (storage sessions) is not supported by this service",
                    ),
                    Change::None,
                ),
                _ => {
                    return (
                        ControlResponse::invalid("Protocols may contain WSS, HTTPS and WEBRTC"),
                        Change::None,
                    )
                }
            };
        list.push(json!({ "Protocol": p, "ResourceEndpoint": endpoint }));
    }
    (
        ControlResponse::ok(json!({ "ResourceEndpointList": list })),
        Change::None,
    )
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct IceConfigRequest {
    #[serde(rename = "ChannelARN")]
    channel_arn: String,
    client_id: Option<String>,
    service: Option<String>,
    username: Option<String>,
}

fn ice_config(
    core: &mut RoutingCore,
    req: IceConfigRequest,
    ctx: &ControlContext<'_>,
) -> (ControlResponse, Change) {
    if let Err(e) = lookup(core, None, Some(&req.channel_arn)) {
        return (e, Change::None);
    }
    if !matches!(req.service.as_deref(), None | Some("TURN")) {
        return (
            ControlResponse::invalid("Service must be TURN"),
            Change::None,
        );
    }
    for (what, v) in [("ClientId", &req.client_id), ("Username", &req.username)] {
        if let Some(v) = v {
            if v.is_empty() || v.len() > 256 {
                return (
                    ControlResponse::invalid(format!("{what} must be 1 to 256 characters")),
                    Change::None,
                );
            }
        }
    }
    let name = req
        .username
        .or(req.client_id)
        .unwrap_or_else(|| "kvs-webrtc".into());
    let servers: Vec<Value> = mint_turn_credentials(ctx.ice, &name, ctx.now)
        .into_iter()
        .map(|s| {
            json!({
                "Uris": s.uris,
                "Username": s.username,
                "Password": s.password,
                "Ttl": s.ttl.as_secs(),
            })
        })
        .collect();
    (
        ControlResponse::ok(json!({ "IceServerList": servers })),
        Change::None,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::turn::TurnServer;
    use crate::ServiceConfig;

    struct Fixture {
        core: RoutingCore,
        endpoints: Endpoints,
        ice: IceServerSettings,
        now: SystemTime,
    }

    impl Fixture {
        fn new() -> Self {
            Fixture {
                core: RoutingCore::new(ServiceConfig::default()),
                endpoints: Endpoints {
                    wss: "wss://127.0.0.1:8443".into(),
                    https: "https://127.0.0.1:8443".into(),
                },
                ice: IceServerSettings {
                    turn_servers: vec![TurnServer {
                        uris: vec!["turn:127.0.0.1:3478".into()],
                        shared_secret: "s".into(),
                    }],
                    credential_ttl: Duration::from_secs(300),
                },
                now: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            }
        }

        fn call(&mut self, op: Operation, body: &str) -> ControlResponse {
            let ctx = ControlContext {
                now: self.now,
                endpoints: &self.endpoints,
                ice: &self.ice,
            };
            handle(&mut self.core, op, body.as_bytes(), &ctx).0
        }
    }

    #[test]
    fn create_describe_delete_with_versions() {
        let mut f = Fixture::new();
        let r = f.call(
            Operation::CreateSignalingChannel,
            r#"{"ChannelName":"cam","SingleMasterConfiguration":{"MessageTtlSeconds":5}}"#,
        );
        assert_eq!(r.status, 200, "{r:?}");
        let arn = r.body["ChannelARN"].as_str().unwrap().to_string();
        assert_eq!(
            arn,
            "arn:aws:kinesisvideo:us-west-2:000000000000:channel/cam/1700000000000"
        );
        let d = f.call(
            Operation::DescribeSignalingChannel,
            r#"{"ChannelName":"cam"}"#,
        );
        assert_eq!(d.body["ChannelInfo"]["ChannelARN"], arn.as_str());
        assert_eq!(
            d.body["ChannelInfo"]["SingleMasterConfiguration"]["MessageTtlSeconds"],
            5
        );
        assert_eq!(d.body["ChannelInfo"]["CreationTime"], 1_700_000_000.0);
        let version = d.body["ChannelInfo"]["Version"]
            .as_str()
            .unwrap()
            .to_string();
        let both = f.call(
            Operation::DescribeSignalingChannel,
            &format!(r#"{{"ChannelName":"cam","ChannelARN":"{arn}"}}"#),
        );
        assert_eq!(both.error_type, Some("InvalidArgumentException"));
        let stale = f.call(
            Operation::DeleteSignalingChannel,
            &format!(r#"{{"ChannelARN":"{arn}","CurrentVersion":"old"}}"#),
        );
        assert_eq!(
            (stale.status, stale.error_type),
            (400, Some("VersionMismatchException"))
        );
        let ok = f.call(
            Operation::DeleteSignalingChannel,
            &format!(r#"{{"ChannelARN":"{arn}","CurrentVersion":"{version}"}}"#),
        );
        assert_eq!(ok.status, 200);
        let gone = f.call(
            Operation::DescribeSignalingChannel,
            r#"{"ChannelName":"cam"}"#,
        );
        assert_eq!(
            (gone.status, gone.error_type),
            (404, Some("ResourceNotFoundException"))
        );
    }

    #[test]
    fn bad_bodies_are_rest_json_errors() {
        let mut f = Fixture::new();
        for (op, body, code) in [
            (
                Operation::CreateSignalingChannel,
                "not json",
                "SerializationException",
            ),
            (
                Operation::CreateSignalingChannel,
                "{}",
                "SerializationException",
            ),
            (
                Operation::CreateSignalingChannel,
                r#"{"ChannelName":"a b"}"#,
                "InvalidArgumentException",
            ),
            (
                Operation::CreateSignalingChannel,
                r#"{"ChannelName":"a","SingleMasterConfiguration":{"MessageTtlSeconds":4}}"#,
                "InvalidArgumentException",
            ),
            (
                Operation::CreateSignalingChannel,
                r#"{"ChannelName":"a","ChannelType":"FULL_MESH"}"#,
                "InvalidArgumentException",
            ),
            (
                Operation::ListSignalingChannels,
                r#"{"MaxResults":0}"#,
                "InvalidArgumentException",
            ),
            (
                Operation::ListSignalingChannels,
                r#"{"NextToken":"zzz"}"#,
                "InvalidArgumentException",
            ),
            (
                Operation::DescribeSignalingChannel,
                "{}",
                "InvalidArgumentException",
            ),
            (
                Operation::GetSignalingChannelEndpoint,
                r#"{"ChannelARN":"nope"}"#,
                "ResourceNotFoundException",
            ),
            (
                Operation::GetIceServerConfig,
                r#"{"ChannelARN":"nope"}"#,
                "ResourceNotFoundException",
            ),
        ] {
            let r = f.call(op, body);
            assert_eq!(r.error_type, Some(code), "{op:?} {body}: {r:?}");
            assert!(r.status >= 400 && r.status < 500);
            assert!(r.body["message"].is_string());
        }
        let huge = "x".repeat(MAX_CONTROL_BODY_BYTES + 1);
        assert_eq!(
            f.call(Operation::CreateSignalingChannel, &huge).error_type,
            Some("InvalidArgumentException")
        );
    }

    #[test]
    fn route_answers_unknown_paths_methods_and_large_bodies_in_rest_json() {
        let mut f = Fixture::new();
        let ctx = ControlContext {
            now: f.now,
            endpoints: &f.endpoints,
            ice: &f.ice,
        };
        let huge = vec![b' '; MAX_CONTROL_BODY_BYTES + 1];
        for (method, path, body, status, error_type) in [
            (
                "POST",
                "/nope",
                &b"{}"[..],
                404,
                "UnknownOperationException",
            ),
            ("POST", "/", &b"{}"[..], 404, "UnknownOperationException"),
            (
                "GET",
                "/listSignalingChannels",
                &b""[..],
                405,
                "UnknownOperationException",
            ),
            (
                "\u{0}\r\n",
                "/listSignalingChannels",
                &b""[..],
                405,
                "UnknownOperationException",
            ),
            (
                "POST",
                "/listSignalingChannels",
                &huge[..],
                413,
                "InvalidArgumentException",
            ),
        ] {
            let (r, change) = route(&mut f.core, method, path, body, &ctx);
            assert_eq!(
                (r.status, r.error_type),
                (status, Some(error_type)),
                "{method} {path}"
            );
            assert!(r.body["message"].is_string());
            assert!(!r.body["message"].as_str().unwrap().contains('\r'));
            assert_eq!(change, Change::None);
        }
        let (ok, _) = route(&mut f.core, "POST", "/listSignalingChannels", b"{}", &ctx);
        assert_eq!(ok.status, 200);
    }

    #[test]
    fn list_pages_endpoints_and_ice_servers() {
        let mut f = Fixture::new();
        for n in ["c", "a", "b"] {
            f.call(
                Operation::CreateSignalingChannel,
                &format!(r#"{{"ChannelName":"{n}"}}"#),
            );
        }
        let p1 = f.call(Operation::ListSignalingChannels, r#"{"MaxResults":2}"#);
        let names: Vec<_> = p1.body["ChannelInfoList"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["ChannelName"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(names, ["a", "b"]);
        let token = p1.body["NextToken"].as_str().unwrap();
        let p2 = f.call(
            Operation::ListSignalingChannels,
            &format!(r#"{{"MaxResults":2,"NextToken":"{token}"}}"#),
        );
        assert_eq!(p2.body["ChannelInfoList"][0]["ChannelName"], "c");
        assert!(p2.body.get("NextToken").is_none());

        let arn = f.core.channel_by_name("a").unwrap().arn;
        let e = f.call(
            Operation::GetSignalingChannelEndpoint,
            &format!(
                r#"{{"ChannelARN":"{arn}","SingleMasterChannelEndpointConfiguration":{{"Protocols":["HTTPS","WSS"],"Role":"VIEWER"}}}}"#
            ),
        );
        assert_eq!(
            e.body["ResourceEndpointList"][0]["ResourceEndpoint"],
            "https://127.0.0.1:8443"
        );
        assert_eq!(e.body["ResourceEndpointList"][1]["Protocol"], "WSS");
        let ice = f.call(
            Operation::GetIceServerConfig,
            &format!(r#"{{"ChannelARN":"{arn}","ClientId":"v1"}}"#),
        );
        assert_eq!(ice.body["IceServerList"][0]["Username"], "1700000300:v1");
        assert_eq!(ice.body["IceServerList"][0]["Ttl"], 300);
    }
}
