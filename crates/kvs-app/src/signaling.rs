//! Turning the `[signaling]` configuration into a signaling client and its credentials.
//!
//! Owns: the choice of credentials provider for `[signaling.credentials]` (the seed's
//! precedence — an application callback given in code wins, then what the file names), and the
//! construction of [`KvsSignalingClient`] or [`WsSignalingClient`] with the right trust.
//!
//! Must not touch: the protocols themselves (they are in `kvs-signaling` and `kvs-aws`).

use crate::config::{CredentialsConfig, SignalingConfig};
use kvs_aws::{
    ChainProvider, Credentials, CredentialsProvider, EnvProvider, IotCredentialsConfig,
    IotCredentialsProvider, ProfileProvider, StaticProvider,
};
use kvs_signaling::kvs::api::EndpointFlavour;
use kvs_signaling::{
    ChannelRef, KvsClientConfig, KvsSignalingClient, Role, SignalingClient, WsSignalingClient,
};
use std::sync::Arc;

/// Why a signaling client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum SignalingSetupError {
    #[error("credentials: {0}")]
    Credentials(#[from] kvs_aws::CredentialsError),
    #[error(transparent)]
    Signaling(#[from] kvs_signaling::SignalingError),
    #[error("trust: {0}")]
    Trust(#[from] kvs_aws::https::HttpError),
    #[error("the embedded default is started with kvs_app::embedded::start, not as a client")]
    Embedded,
    #[error("a KVS client needs `signaling.mode = \"kvs\"`")]
    NotKvs,
}

/// The provider `[signaling.credentials]` names.
pub fn credentials_provider(
    config: &CredentialsConfig,
) -> Result<Arc<dyn CredentialsProvider>, SignalingSetupError> {
    Ok(match config {
        CredentialsConfig::Default => Arc::new(ChainProvider::default_chain()),
        CredentialsConfig::Env => Arc::new(EnvProvider::new()),
        CredentialsConfig::Profile { profile: None } => Arc::new(ProfileProvider::from_env()),
        CredentialsConfig::Profile {
            profile: Some(name),
        } => {
            let home = std::env::var_os("HOME").map(std::path::PathBuf::from);
            let file = |var: &str, default: &str| {
                std::env::var_os(var)
                    .filter(|v| !v.is_empty())
                    .map(std::path::PathBuf::from)
                    .or_else(|| home.as_ref().map(|h| h.join(".aws").join(default)))
            };
            Arc::new(ProfileProvider::new(
                name.clone(),
                file("AWS_SHARED_CREDENTIALS_FILE", "credentials"),
                file("AWS_CONFIG_FILE", "config"),
            ))
        }
        CredentialsConfig::Static {
            access_key_id,
            secret_access_key,
            session_token,
        } => Arc::new(StaticProvider::new(Credentials::new(
            access_key_id.clone(),
            secret_access_key.clone(),
            session_token.clone(),
            None,
        ))),
        CredentialsConfig::Iot {
            endpoint,
            role_alias,
            thing_name,
            cert_file,
            key_file,
            ca_file,
        } => {
            let mut iot = IotCredentialsConfig::new(
                endpoint.clone(),
                role_alias.clone(),
                thing_name.clone(),
                cert_file.clone(),
                key_file.clone(),
            );
            iot.ca_path = ca_file.clone();
            // Loads the certificate and key now: a wrong path fails at start-up.
            Arc::new(IotCredentialsProvider::new(iot)?)
        }
    })
}

/// The [`KvsClientConfig`] for a `mode = "kvs"` configuration. `credentials` (an application
/// callback, say) replaces what the file names.
pub fn kvs_client_config(
    config: &SignalingConfig,
    role: Role,
    credentials: Option<Arc<dyn CredentialsProvider>>,
) -> Result<KvsClientConfig, SignalingSetupError> {
    let SignalingConfig::Kvs {
        channel,
        region,
        endpoint,
        create_channel,
        fips,
        dual_stack,
        ca_file,
        use_turn,
        credentials: from_file,
    } = config
    else {
        return Err(SignalingSetupError::NotKvs);
    };
    let credentials = match credentials {
        Some(c) => c,
        None => credentials_provider(from_file)?,
    };
    let channel = if channel.starts_with("arn:") {
        ChannelRef::Arn(channel.clone())
    } else {
        ChannelRef::Name(channel.clone())
    };
    let by_arn = matches!(channel, ChannelRef::Arn(_));
    let mut kvs = KvsClientConfig::new(region.clone(), channel, role, credentials)?;
    let flavour = EndpointFlavour {
        fips: *fips,
        dual_stack: *dual_stack,
    };
    kvs.flavour = flavour;
    kvs.stun_url = Some(kvs_signaling::kvs::api::stun_url(region, flavour));
    kvs.control_endpoint = endpoint.clone();
    kvs.create_channel = *create_channel && !by_arn;
    kvs.use_turn = *use_turn;
    if let Some(ca) = ca_file {
        // The public roots and the extra CA: a proxy or a local service alike.
        kvs.tls = kvs_aws::https::client_tls_config_from_file(ca, false)?;
    }
    Ok(kvs)
}

/// The signaling client for `config` (`kvs` or `url` mode) in `role`.
pub fn build_client(
    config: &SignalingConfig,
    role: Role,
    credentials: Option<Arc<dyn CredentialsProvider>>,
) -> Result<Arc<dyn SignalingClient>, SignalingSetupError> {
    match config {
        SignalingConfig::Kvs { .. } => {
            let kvs = kvs_client_config(config, role, credentials)?;
            Ok(Arc::new(KvsSignalingClient::new(kvs)?))
        }
        SignalingConfig::Url { url, channel_arn } => {
            let url = kvs_signaling::data_plane_url(url, channel_arn, &role)?;
            Ok(Arc::new(WsSignalingClient::new(url, role)))
        }
        SignalingConfig::Embedded { .. } => Err(SignalingSetupError::Embedded),
    }
}
