//! [`KvsSignalingClient`]: the device's (or a viewer's) client of Amazon KVS signaling, and of
//! any service that speaks its protocol (the local one in `kvs-signaling-service`).
//!
//! Owns: the sequence a KVS client runs — DescribeSignalingChannel (CreateSignalingChannel when
//! it is missing and allowed), GetSignalingChannelEndpoint for WSS and HTTPS, GetIceServerConfig
//! — each call signed with SigV4 (through `kvs-aws`), the data-plane URL presigned anew on every
//! connect (session token included), the clock-skew correction (a "Signature expired" answer's
//! `Date` header sets the offset and the call is retried once), the caches of channel, endpoints
//! and ICE servers (with their TTL), and renewing the WebSocket before the one-hour limit.
//!
//! Must not touch: backoff between failed connects and what to do with messages (the
//! application layer), peer connections.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use kvs_aws::{
    clock_offset_from_response, presign_url, sign_request, CachingProvider, ClockOffset,
    Credentials, CredentialsProvider, RequestToSign, TimeSource, KVS_SERVICE,
};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::api::{
    self, ApiError, ChannelDescription, ChannelEndpoints, ChannelRef, EndpointFlavour, EndpointRole,
};
use crate::client::{
    open_websocket, spawn_link, Renewal, Role, SignalingClient, SignalingError, SignalingLink,
    WsStream,
};
use crate::codec::validate_client_id;
use crate::ice::IceServer;

const USER_AGENT: &str = concat!("kvs-webrtc-rust/", env!("CARGO_PKG_VERSION"));
/// How often a newly created channel is described while it is still `CREATING`.
const CREATE_POLL: Duration = Duration::from_millis(500);
const CREATE_POLLS: usize = 20;
/// How long an ICE server list without TURN entries (STUN only) is kept before asking again.
const STUN_ONLY_TTL: Duration = Duration::from_secs(300);

/// Settings of a [`KvsSignalingClient`]. [`KvsClientConfig::new`] gives the defaults real KVS
/// needs; change the fields for a local service or other limits.
#[derive(Clone)]
pub struct KvsClientConfig {
    /// AWS region, e.g. `us-west-2` (signing scope, endpoint and STUN host).
    pub region: String,
    pub channel: ChannelRef,
    pub role: Role,
    /// The control plane, e.g. `https://127.0.0.1:8443`; `None` derives it from the region
    /// and [`KvsClientConfig::flavour`].
    pub control_endpoint: Option<String>,
    pub flavour: EndpointFlavour,
    /// Create the channel (by name) when DescribeSignalingChannel says it does not exist.
    pub create_channel: bool,
    /// MessageTtlSeconds of a channel we create.
    pub message_ttl: Duration,
    /// Where credentials come from; wrapped in a [`CachingProvider`] by the client.
    pub credentials: Arc<dyn CredentialsProvider>,
    /// Trust for the HTTPS and WSS endpoints.
    pub tls: Arc<rustls::ClientConfig>,
    /// A STUN server put first in the ICE server list; by default the region's KVS one.
    pub stun_url: Option<String>,
    /// Ask GetIceServerConfig for TURN servers.
    pub use_turn: bool,
    /// Each control-plane call must finish within this.
    pub request_timeout: Duration,
    /// A WebSocket connect must finish within this (the seed: 15 s).
    pub connect_timeout: Duration,
    /// Keep-alive pings (the C SDK: 10 s).
    pub ping_interval: Duration,
    /// `X-Amz-Expires` of presigned URLs (the JS SDK: 299 s).
    pub presign_expires: Duration,
    /// Renew the WebSocket after this long; KVS closes connections after one hour.
    pub max_connection_age: Option<Duration>,
    /// ICE servers are fetched again when less than this is left of their TTL.
    pub ice_refresh_margin: Duration,
    /// Capacity of the link's queues.
    pub queue_capacity: usize,
    /// The local clock (signing times are this plus the learned offset).
    pub clock: TimeSource,
}

impl std::fmt::Debug for KvsClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvsClientConfig")
            .field("region", &self.region)
            .field("channel", &self.channel)
            .field("role", &self.role)
            .field("control_endpoint", &self.control_endpoint)
            .field("flavour", &self.flavour)
            .field("create_channel", &self.create_channel)
            .field("credentials", &self.credentials.name())
            .field("stun_url", &self.stun_url)
            .field("use_turn", &self.use_turn)
            .field("max_connection_age", &self.max_connection_age)
            .finish_non_exhaustive()
    }
}

impl KvsClientConfig {
    /// Real KVS in `region`, trusting the public web roots.
    pub fn new(
        region: impl Into<String>,
        channel: ChannelRef,
        role: Role,
        credentials: Arc<dyn CredentialsProvider>,
    ) -> Result<Self, SignalingError> {
        let region = region.into();
        let tls = kvs_aws::https::client_tls_config(None, false)
            .map_err(|e| SignalingError::Tls(e.to_string()))?;
        Ok(KvsClientConfig {
            stun_url: Some(api::stun_url(&region, EndpointFlavour::default())),
            region,
            channel,
            role,
            control_endpoint: None,
            flavour: EndpointFlavour::default(),
            create_channel: false,
            message_ttl: Duration::from_secs(60),
            credentials,
            tls,
            use_turn: true,
            request_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(15),
            ping_interval: Duration::from_secs(10),
            presign_expires: kvs_aws::DEFAULT_PRESIGN_EXPIRES,
            max_connection_age: Some(Duration::from_secs(50 * 60)),
            ice_refresh_margin: Duration::from_secs(30),
            queue_capacity: 64,
            clock: kvs_aws::credentials::system_time_source(),
        })
    }

    /// The control plane this configuration talks to.
    pub fn control_plane(&self) -> String {
        self.control_endpoint
            .clone()
            .unwrap_or_else(|| api::control_plane_endpoint(&self.region, self.flavour))
            .trim_end_matches('/')
            .to_string()
    }

    fn validate(&self) -> Result<(), SignalingError> {
        let bad = |m: String| Err(SignalingError::Config(m));
        if !api::is_valid_region(&self.region) {
            return bad(format!("invalid region {:?}", self.region));
        }
        match &self.channel {
            ChannelRef::Name(n) => {
                let ok = !n.is_empty()
                    && n.len() <= 256
                    && n.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
                if !ok {
                    return bad(format!(
                        "channel name must be 1-256 characters of [a-zA-Z0-9_.-], got {n:?}"
                    ));
                }
            }
            ChannelRef::Arn(a) => {
                if !a.starts_with("arn:") || a.len() > 1024 {
                    return bad(format!("not a channel ARN: {a:?}"));
                }
                if self.create_channel {
                    return bad("create_channel needs a channel name, not an ARN".into());
                }
            }
        }
        if let Role::Viewer { client_id } = &self.role {
            validate_client_id(client_id)?;
        }
        let endpoint = self.control_plane();
        if !(endpoint.starts_with("https://") || endpoint.starts_with("http://")) {
            return bad(format!(
                "control-plane endpoint must be an http(s) URL, got {endpoint:?}"
            ));
        }
        if self.presign_expires < Duration::from_secs(1)
            || self.presign_expires > Duration::from_secs(604_800)
        {
            return bad("presign_expires must be 1 s to 7 days".into());
        }
        Ok(())
    }
}

/// The channel and where this role reaches it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Resolved {
    arn: String,
    endpoints: ChannelEndpoints,
}

struct IceCache {
    servers: Vec<IceServer>,
    /// When the list counts as stale (TTL minus the refresh margin).
    stale_at: Instant,
}

#[derive(Default)]
struct Cache {
    channel: Option<Resolved>,
    ice: Option<IceCache>,
}

struct Inner {
    config: KvsClientConfig,
    credentials: CachingProvider,
    cache: tokio::sync::Mutex<Cache>,
    offset: Mutex<ClockOffset>,
}

/// A KVS signaling client; cheap to clone (clones share caches and the clock offset).
#[derive(Clone)]
pub struct KvsSignalingClient {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for KvsSignalingClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvsSignalingClient")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl KvsSignalingClient {
    /// Checks the configuration (region, channel, client id, endpoint) and builds the client.
    /// Nothing is sent until the first call.
    pub fn new(config: KvsClientConfig) -> Result<Self, SignalingError> {
        config.validate()?;
        let credentials = CachingProvider::with_config(
            config.credentials.clone(),
            Default::default(),
            config.clock.clone(),
        );
        Ok(KvsSignalingClient {
            inner: Arc::new(Inner {
                config,
                credentials,
                cache: tokio::sync::Mutex::new(Cache::default()),
                offset: Mutex::new(ClockOffset::ZERO),
            }),
        })
    }

    pub fn config(&self) -> &KvsClientConfig {
        &self.inner.config
    }

    /// The correction currently applied to the local clock when signing.
    pub fn clock_offset(&self) -> ClockOffset {
        *self.inner.offset.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The channel's ARN and this role's endpoints, resolving (and creating) it on first use.
    pub async fn channel(&self) -> Result<(String, ChannelEndpoints), SignalingError> {
        let r = self.resolve().await?;
        Ok((r.arn, r.endpoints))
    }

    fn signing_time(&self) -> SystemTime {
        self.clock_offset().apply((self.inner.config.clock)())
    }

    /// Learns the offset from a clock-skew refusal; true when the call is worth retrying.
    fn correct_clock(&self, status: u16, body: &str, date: Option<&str>) -> bool {
        let local = (self.inner.config.clock)();
        match clock_offset_from_response(status, body, date, local) {
            Some(offset) => {
                warn!(
                    offset_ms = offset.millis,
                    "the service says our clock is off; correcting and retrying"
                );
                *self.inner.offset.lock().unwrap_or_else(|e| e.into_inner()) = offset;
                true
            }
            None => false,
        }
    }

    async fn credentials(&self) -> Result<Credentials, SignalingError> {
        self.inner
            .credentials
            .provide_credentials()
            .await
            .map_err(|e| SignalingError::Credentials(e.to_string()))
    }

    /// One signed `POST` of a JSON body; a clock-skew refusal is corrected and retried once.
    /// Returns the body of a 200 answer.
    async fn post(
        &self,
        operation: &'static str,
        url: &str,
        body: &str,
    ) -> Result<Bytes, SignalingError> {
        let config = &self.inner.config;
        for attempt in 0..2 {
            let credentials = self.credentials().await?;
            let content_type = ("content-type", "application/json");
            let signed = sign_request(
                &credentials,
                &config.region,
                KVS_SERVICE,
                self.signing_time(),
                &RequestToSign {
                    method: "POST",
                    url,
                    headers: &[content_type],
                    body: body.as_bytes(),
                },
            )
            .map_err(|e| SignalingError::Presign(e.to_string()))?;
            let mut headers: Vec<(&str, &str)> = vec![content_type, ("user-agent", USER_AGENT)];
            headers.extend(signed.iter().map(|(k, v)| (k.as_str(), v.as_str())));
            let request = kvs_aws::https::Request {
                method: "POST",
                url,
                headers: &headers,
                body: body.as_bytes(),
            };
            let answer = kvs_aws::https::send(
                Some(&config.tls),
                &request,
                api::MAX_ANSWER_BYTES,
                config.request_timeout,
            )
            .await
            .map_err(|e| SignalingError::Http(format!("{operation}: {e}")))?;
            debug!(operation, status = answer.status, "control-plane call");
            if answer.status == 200 {
                return Ok(answer.body);
            }
            if attempt == 0
                && self.correct_clock(answer.status, &answer.body_text(), answer.header("date"))
            {
                continue;
            }
            let error = ApiError::from_answer(
                operation,
                answer.status,
                answer.header("x-amzn-errortype"),
                &answer.body,
            );
            if error.is_auth_failure() {
                // Rotated or revoked credentials: fetch them anew next time.
                self.inner.credentials.invalidate().await;
            }
            return Err(error.into());
        }
        unreachable!("the loop returns on its second pass")
    }

    async fn describe(&self) -> Result<Option<ChannelDescription>, SignalingError> {
        let url = format!(
            "{}{}",
            self.inner.config.control_plane(),
            api::DESCRIBE_PATH
        );
        let body = api::describe_request(&self.inner.config.channel);
        match self.post("DescribeSignalingChannel", &url, &body).await {
            Ok(answer) => Ok(Some(api::parse_describe(&answer)?)),
            Err(SignalingError::Api(e)) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn create(&self, name: &str) -> Result<(), SignalingError> {
        let url = format!("{}{}", self.inner.config.control_plane(), api::CREATE_PATH);
        let body = api::create_request(name, self.inner.config.message_ttl);
        match self.post("CreateSignalingChannel", &url, &body).await {
            Ok(answer) => {
                let arn = api::parse_create(&answer)?;
                info!(channel = name, %arn, "created the signaling channel");
                Ok(())
            }
            // Someone else created it meanwhile: fine.
            Err(SignalingError::Api(e)) if e.error_type == "ResourceInUseException" => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Describe (create if allowed and missing, wait until ACTIVE), then get the endpoints.
    async fn resolve_uncached(&self) -> Result<Resolved, SignalingError> {
        let config = &self.inner.config;
        let mut description = self.describe().await?;
        if description.is_none() {
            match (&config.channel, config.create_channel) {
                (ChannelRef::Name(name), true) => {
                    self.create(name).await?;
                    description = self.describe().await?;
                }
                (channel, _) => {
                    let reason = format!(
                        "signaling channel {channel:?} does not exist (and creating it is not enabled)"
                    );
                    return Err(SignalingError::Config(reason));
                }
            }
        }
        let mut polls = 0;
        let description = loop {
            match description {
                Some(d) if d.status == "ACTIVE" => break d,
                Some(d) if d.status == "CREATING" && polls < CREATE_POLLS => {
                    polls += 1;
                    tokio::time::sleep(CREATE_POLL).await;
                    description = self.describe().await?;
                }
                Some(d) => {
                    return Err(SignalingError::ChannelState(format!(
                        "signaling channel {} is {}, not ACTIVE",
                        d.arn, d.status
                    )))
                }
                None => {
                    return Err(SignalingError::ChannelState(
                        "the signaling channel disappeared while it was being created".into(),
                    ))
                }
            }
        };
        let role = match config.role {
            Role::Master => EndpointRole::Master,
            Role::Viewer { .. } => EndpointRole::Viewer,
        };
        let url = format!("{}{}", config.control_plane(), api::GET_ENDPOINT_PATH);
        let answer = self
            .post(
                "GetSignalingChannelEndpoint",
                &url,
                &api::endpoint_request(&description.arn, role),
            )
            .await?;
        let endpoints = api::parse_endpoints(&answer)?;
        info!(channel = %description.arn, wss = %endpoints.wss, "signaling channel resolved");
        Ok(Resolved {
            arn: description.arn,
            endpoints,
        })
    }

    async fn resolve(&self) -> Result<Resolved, SignalingError> {
        let mut cache = self.inner.cache.lock().await;
        if let Some(r) = &cache.channel {
            return Ok(r.clone());
        }
        let resolved = self.resolve_uncached().await?;
        cache.channel = Some(resolved.clone());
        Ok(resolved)
    }

    /// Forget the channel and endpoints (they are looked up again on the next connect).
    async fn invalidate_channel(&self) {
        self.inner.cache.lock().await.channel = None;
    }

    async fn fetch_ice_servers(&self) -> Result<Vec<IceServer>, SignalingError> {
        let config = &self.inner.config;
        let mut servers: Vec<IceServer> = config.stun_url.iter().map(IceServer::stun).collect();
        let mut stale_after = STUN_ONLY_TTL;
        if config.use_turn {
            let resolved = self.resolve().await?;
            let client_id = match &config.role {
                Role::Viewer { client_id } => Some(client_id.as_str()),
                Role::Master => None,
            };
            let url = format!(
                "{}{}",
                resolved.endpoints.https.trim_end_matches('/'),
                api::GET_ICE_PATH
            );
            let answer = self
                .post(
                    "GetIceServerConfig",
                    &url,
                    &api::ice_request(&resolved.arn, client_id),
                )
                .await?;
            let room = api::MAX_ICE_SERVERS - servers.len();
            let turn = api::parse_ice_servers(&answer, room)?;
            if let Some(ttl) = turn.iter().filter_map(|s| s.ttl).min() {
                stale_after = ttl.saturating_sub(config.ice_refresh_margin);
            }
            servers.extend(turn);
        }
        debug!(count = servers.len(), ?stale_after, "ICE servers fetched");
        self.inner.cache.lock().await.ice = Some(IceCache {
            servers: servers.clone(),
            stale_at: Instant::now() + stale_after,
        });
        Ok(servers)
    }

    /// Presigns the data-plane URL and opens it; a clock-skew refusal is corrected and
    /// retried once. A refusal that suggests stale endpoints drops the cached channel.
    async fn open_stream(&self) -> Result<WsStream, SignalingError> {
        let config = &self.inner.config;
        let resolved = self.resolve().await?;
        for attempt in 0..2 {
            let credentials = self.credentials().await?;
            let mut query: Vec<(&str, &str)> = vec![("X-Amz-ChannelARN", &resolved.arn)];
            if let Role::Viewer { client_id } = &config.role {
                query.push(("X-Amz-ClientId", client_id));
            }
            let base = resolved.endpoints.wss.trim_end_matches('/');
            let url = presign_url(
                &credentials,
                &config.region,
                KVS_SERVICE,
                self.signing_time(),
                base,
                &query,
                config.presign_expires,
            )
            .map_err(|e| SignalingError::Presign(e.to_string()))?;
            match open_websocket(&url, Some(&config.tls), config.connect_timeout).await {
                Ok(ws) => return Ok(ws),
                Err(SignalingError::Refused { status, body, date })
                    if attempt == 0 && self.correct_clock(status, &body, date.as_deref()) => {}
                Err(e) => {
                    match &e {
                        SignalingError::Refused {
                            status: 401 | 403, ..
                        } => self.inner.credentials.invalidate().await,
                        SignalingError::Refused { status: 404, .. }
                        | SignalingError::Connect(_)
                        | SignalingError::ConnectTimeout(_) => self.invalidate_channel().await,
                        _ => {}
                    }
                    return Err(e);
                }
            }
        }
        Err(SignalingError::Connect(
            "refused twice for clock skew".into(),
        ))
    }
}

impl SignalingClient for KvsSignalingClient {
    fn connect(&self) -> BoxFuture<'_, Result<SignalingLink, SignalingError>> {
        Box::pin(async move {
            let ws = self.open_stream().await?;
            info!(role = ?self.inner.config.role, "signaling connected (KVS)");
            let renewal = self.inner.config.max_connection_age.map(|after| {
                let me = self.clone();
                Renewal {
                    after,
                    open: Arc::new(move || {
                        let me = me.clone();
                        Box::pin(async move { me.open_stream().await })
                    }),
                }
            });
            let config = &self.inner.config;
            Ok(spawn_link(
                ws,
                config.role.clone(),
                config.queue_capacity,
                config.ping_interval,
                renewal,
            ))
        })
    }

    fn ice_servers(&self) -> BoxFuture<'_, Result<Vec<IceServer>, SignalingError>> {
        Box::pin(async move {
            {
                let cache = self.inner.cache.lock().await;
                if let Some(ice) = &cache.ice {
                    if Instant::now() < ice.stale_at {
                        return Ok(ice.servers.clone());
                    }
                }
            }
            self.fetch_ice_servers().await
        })
    }

    fn refresh_ice_servers(&self) -> BoxFuture<'_, Result<Vec<IceServer>, SignalingError>> {
        Box::pin(self.fetch_ice_servers())
    }
}
