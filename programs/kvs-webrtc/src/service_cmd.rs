//! `kvs-webrtc service`: the local KVS-compatible signaling service on its own.
//!
//! Serves the REST control plane and the WebSocket data plane on one port, over TLS with a CA
//! kept in the state directory (or plain with `--plain`), checking SigV4 signatures against
//! the configured key (or none with `--no-auth`), handing out TURN credentials for a coturn
//! that shares `--turn-secret`.
//!
//! Limits (docs/SECURITY.md explains each): channels, connections in total and per client
//! address, connects per channel, SDP and ICE messages per connection, idle and maximum
//! connection time, request header and body deadlines. `--no-auth` is refused on an address
//! beyond loopback: an unauthenticated control plane on the network lets anyone delete
//! channels or take over a channel as its master.

use anyhow::{bail, Context, Result};
use clap::Args;
use kvs_signaling_service::turn::{IceServerSettings, TurnServer};
use kvs_signaling_service::{AccessKey, RateLimit, ServiceConfig, ServiceState};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Args)]
pub struct ServiceArgs {
    /// Address to serve on.
    #[arg(long, default_value = "127.0.0.1:8443")]
    listen: SocketAddr,

    /// Serve plain HTTP/WS instead of TLS.
    #[arg(long)]
    plain: bool,

    /// Where channels and the CA are kept [default: $XDG_DATA_HOME/kvs-webrtc/service or
    /// ~/.local/share/kvs-webrtc/service].
    #[arg(long, env = "KVS_SERVICE_STATE_DIR")]
    state_dir: Option<PathBuf>,

    /// Region written into ARNs and required in signatures' credential scope.
    #[arg(long, default_value = "us-west-2", env = "KVS_SERVICE_REGION")]
    region: String,

    /// 12-digit account id written into ARNs.
    #[arg(long, default_value = "000000000000")]
    account_id: String,

    /// Access key id whose signatures are accepted.
    #[arg(
        long,
        env = "KVS_SERVICE_ACCESS_KEY_ID",
        requires = "secret_access_key"
    )]
    access_key_id: Option<String>,

    /// Secret of --access-key-id (prefer the environment variable: command lines are visible).
    #[arg(long, env = "KVS_SERVICE_SECRET_ACCESS_KEY", hide_env_values = true)]
    secret_access_key: Option<String>,

    /// Session token required with the key (temporary credentials).
    #[arg(long, env = "KVS_SERVICE_SESSION_TOKEN", hide_env_values = true)]
    session_token: Option<String>,

    /// Accept unsigned requests (no SigV4 checks).
    #[arg(long, conflicts_with = "access_key_id")]
    no_auth: bool,

    /// Extra host name or IP address for the server certificate (repeatable).
    #[arg(long = "host-name")]
    host_names: Vec<String>,

    /// TURN URI handed out by GetIceServerConfig, e.g. turn:127.0.0.1:3478 (repeatable).
    #[arg(long = "turn-uri", requires = "turn_secret")]
    turn_uris: Vec<String>,

    /// The TURN server's shared secret (coturn `static-auth-secret`).
    #[arg(long, env = "KVS_SERVICE_TURN_SECRET", hide_env_values = true)]
    turn_secret: Option<String>,

    /// Lifetime of minted TURN credentials, in seconds.
    #[arg(long, default_value_t = 300)]
    turn_ttl: u64,

    /// Viewers allowed per channel at once.
    #[arg(long, default_value_t = 10)]
    max_viewers: usize,

    /// Create this channel at start-up if it does not exist (repeatable).
    #[arg(long = "channel")]
    channels: Vec<String>,

    /// Most channels the service holds [default: 10000, as a KVS account].
    #[arg(long)]
    max_channels: Option<usize>,

    /// Most TCP connections open at once [default: 8192].
    #[arg(long)]
    max_connections: Option<usize>,

    /// Most TCP connections open at once from one IP address (IPv6: one /64) [default: 256].
    #[arg(long)]
    max_connections_per_ip: Option<usize>,

    /// WebSocket connects per channel per second; 0: unlimited [default: 3, as KVS].
    #[arg(long)]
    connects_per_second: Option<u32>,

    /// Connects a channel may take at once [default: 10].
    #[arg(long)]
    connect_burst: Option<u32>,

    /// SDP offers and answers per connection per second; 0: unlimited [default: 5, as KVS].
    #[arg(long)]
    sdp_per_second: Option<u32>,

    /// ICE candidates per connection per second; 0: unlimited [default: 20, as KVS].
    #[arg(long)]
    ice_per_second: Option<u32>,

    /// Close a WebSocket connection that receives nothing for this many seconds
    /// [default: 600, as KVS].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    idle_timeout: Option<u64>,

    /// Close every WebSocket connection after this many seconds; clients reconnect
    /// [default: 3600, as KVS].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    max_connection_age: Option<u64>,

    /// Seconds a client has to send a request's headers, and its body [default: 10].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    request_timeout: Option<u64>,
}

/// `per_second` of 0 means no limit; the burst keeps the default's ratio to the rate unless
/// given.
fn rate(
    default: Option<RateLimit>,
    per_second: Option<u32>,
    burst: Option<u32>,
) -> Option<RateLimit> {
    match (default, per_second) {
        (_, Some(0)) => None,
        (Some(d), None) => Some(RateLimit::new(d.per_second, burst.unwrap_or(d.burst))),
        (Some(d), Some(r)) => {
            let scaled = u64::from(r) * u64::from(d.burst) / u64::from(d.per_second.max(1));
            Some(RateLimit::new(
                r,
                burst.unwrap_or(scaled.clamp(1, u64::from(u32::MAX)) as u32),
            ))
        }
        (None, Some(r)) => Some(RateLimit::new(r, burst.unwrap_or(r))),
        (None, None) => None,
    }
}

fn default_state_dir() -> Result<PathBuf> {
    kvs_signaling_service::store::default_state_dir("service")
        .context("neither --state-dir nor HOME is set")
}

pub async fn run(args: ServiceArgs) -> Result<()> {
    if args.no_auth && !args.listen.ip().is_loopback() {
        bail!(
            "--no-auth on {} would let anyone who can reach it delete channels or connect as \
             a channel's master; listen on a loopback address, or give a key",
            args.listen
        );
    }
    let state_dir = match args.state_dir {
        Some(d) => d,
        None => default_state_dir()?,
    };
    let access_keys = match (&args.access_key_id, &args.secret_access_key, args.no_auth) {
        (Some(id), Some(secret), false) => vec![AccessKey {
            access_key_id: id.clone(),
            secret_access_key: secret.clone(),
            session_token: args.session_token.clone(),
        }],
        (None, _, true) => Vec::new(),
        _ => bail!(
            "give the key clients sign with (--access-key-id and --secret-access-key, or \
             KVS_SERVICE_ACCESS_KEY_ID and KVS_SERVICE_SECRET_ACCESS_KEY), or --no-auth"
        ),
    };
    let turn_servers = match &args.turn_secret {
        Some(secret) if !args.turn_uris.is_empty() => vec![TurnServer {
            uris: args.turn_uris.clone(),
            shared_secret: secret.clone(),
        }],
        _ => Vec::new(),
    };
    let defaults = ServiceConfig::default();
    let request_timeout = args.request_timeout.map(Duration::from_secs);
    let config = ServiceConfig {
        max_channels: args.max_channels.unwrap_or(defaults.max_channels),
        max_connections: args.max_connections.unwrap_or(defaults.max_connections),
        max_connections_per_ip: args
            .max_connections_per_ip
            .unwrap_or(defaults.max_connections_per_ip),
        connect_rate: rate(
            defaults.connect_rate,
            args.connects_per_second,
            args.connect_burst,
        ),
        sdp_rate: rate(defaults.sdp_rate, args.sdp_per_second, None),
        ice_rate: rate(defaults.ice_rate, args.ice_per_second, None),
        idle_timeout: args
            .idle_timeout
            .map_or(defaults.idle_timeout, Duration::from_secs),
        max_connection_age: args
            .max_connection_age
            .map_or(defaults.max_connection_age, Duration::from_secs),
        header_read_timeout: request_timeout.unwrap_or(defaults.header_read_timeout),
        body_read_timeout: request_timeout.unwrap_or(defaults.body_read_timeout),
        region: args.region.clone(),
        account_id: args.account_id.clone(),
        max_viewers_per_channel: args.max_viewers,
        access_keys,
        ice_servers: IceServerSettings {
            turn_servers,
            credential_ttl: Duration::from_secs(args.turn_ttl),
        },
        state_dir: Some(state_dir.clone()),
        ..defaults
    };
    let state = ServiceState::open(config)
        .with_context(|| format!("loading the channels in {}", state_dir.display()))?;
    for name in &args.channels {
        let info = state
            .ensure_channel(name)
            .with_context(|| format!("creating channel {name}"))?;
        println!("Channel:       {} {}", info.name, info.arn);
    }
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let app = kvs_signaling_service::router(state.clone());
    let handle = if args.plain {
        kvs_signaling_service::spawn_router(listener, app, state)
    } else {
        let tls = kvs_signaling_service::tls::load_or_create(&state_dir, &args.host_names)
            .context("setting up TLS")?;
        println!("CA certificate: {}", tls.ca_path.display());
        kvs_signaling_service::spawn_tls(listener, app, state, &tls)?
    };
    // Printed to stdout (logs go to stderr) so scripts and tests can find the endpoints.
    println!(
        "Control plane: {}",
        handle.http_endpoint().unwrap_or_default()
    );
    println!(
        "Data plane:    {}",
        handle.ws_endpoint().unwrap_or_default()
    );
    println!("State:         {}", state_dir.display());
    if args.no_auth {
        println!("Authentication: none (--no-auth)");
    }
    crate::wait_for_stop().await;
    println!("Stopping…");
    handle.shutdown().await;
    Ok(())
}
