//! `kvs-webrtc service`: the local KVS-compatible signaling service on its own.
//!
//! Serves the REST control plane and the WebSocket data plane on one port, over TLS with a CA
//! kept in the state directory (or plain with `--plain`), checking SigV4 signatures against
//! the configured key (or none with `--no-auth`), handing out TURN credentials for a coturn
//! that shares `--turn-secret`.

use anyhow::{bail, Context, Result};
use clap::Args;
use kvs_signaling_service::turn::{IceServerSettings, TurnServer};
use kvs_signaling_service::{AccessKey, ServiceConfig, ServiceState};
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
}

fn default_state_dir() -> Result<PathBuf> {
    kvs_signaling_service::store::default_state_dir("service")
        .context("neither --state-dir nor HOME is set")
}

pub async fn run(args: ServiceArgs) -> Result<()> {
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
    let config = ServiceConfig {
        region: args.region.clone(),
        account_id: args.account_id.clone(),
        max_viewers_per_channel: args.max_viewers,
        access_keys,
        ice_servers: IceServerSettings {
            turn_servers,
            credential_ttl: Duration::from_secs(args.turn_ttl),
        },
        state_dir: Some(state_dir.clone()),
        ..ServiceConfig::default()
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
