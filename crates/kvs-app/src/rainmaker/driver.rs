//! The tokio edge of the RainMaker node: `rumqttc` over mutual TLS, driving a [`NodeCore`]
//! against a [`DeviceControl`].
//!
//! Owns: the MQTT connection (client id = node id, keep-alive, the last will, clean sessions,
//! reconnection with backoff, the `params/remote` subscription after every CONNACK), the TLS
//! set-up from PEM files, and three small tasks: the MQTT event loop, the node (core, timers,
//! viewer count) and the applier (one [`DeviceControl::apply`] at a time, in order).
//!
//! Must not touch: policy (the core decides what to publish and what to apply) or streaming —
//! the broker coming and going never reaches the device; only confirmed writes do.
//!
//! Bounds: rumqttc's request channel ([`REQUEST_CAPACITY`]; a publish that does not fit is
//! dropped and logged — the next init state repeats everything), incoming packets up to
//! [`MAX_INCOMING_PACKET`] (a larger one ends the connection, which is then re-established),
//! events from the MQTT loop to the node ([`EVENT_CAPACITY`], the loop waits), applies in
//! flight ([`super::core::MAX_PENDING_APPLIES`]).

use super::core::{CameraState, Change, NodeCore, NodeSettings, Output, Qos, Resolution};
use super::RainmakerError;
use crate::backoff::Backoff;
use crate::config::{AudioSourceConfig, DeviceConfig, RainmakerConfig, VideoSourceConfig};
use crate::control::{ControlError, DeviceControl};
use rumqttc::{
    AsyncClient, Event, LastWill, MqttOptions, Packet, QoS, TlsConfiguration, Transport,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

/// rumqttc's request channel (publishes and subscribes waiting for the event loop).
pub const REQUEST_CAPACITY: usize = 64;
/// Largest packet accepted from the broker: a `params/remote` payload the core looks at, plus
/// room for the topic and header.
pub const MAX_INCOMING_PACKET: usize = super::core::MAX_REMOTE_PAYLOAD + 1024;
/// Largest packet sent (the node config is ~2 KB).
pub const MAX_OUTGOING_PACKET: usize = 64 * 1024;
/// MQTT events waiting for the node task.
pub const EVENT_CAPACITY: usize = 64;

/// The [`NodeSettings`] for `config`, starting from `initial` (whose resolution joins the
/// `valid_strs` when it is not one of the defaults).
pub fn settings_from(config: &RainmakerConfig, initial: CameraState) -> NodeSettings {
    let mut s = NodeSettings::new(config.node_id.clone());
    s.channel = config.channel.clone();
    s.basic_ingest_prefix = config.basic_ingest_prefix.clone();
    s.initial = initial;
    if let Some(name) = &config.name {
        s.initial.name = name.clone();
    }
    // The size the device starts with is always a valid choice.
    if !s.resolutions.contains(&s.initial.resolution) {
        s.resolutions.push(s.initial.resolution);
        s.resolutions
            .sort_by_key(|r| (u64::from(r.width) * u64::from(r.height), r.width));
    }
    s
}

/// The values a device started from `device` reports before any write: streaming on, the test
/// pattern's size and bitrate (640x480 and 1000 kbit/s otherwise), audio on unless the source is
/// `none`, `session.max_viewers` (at most 10).
pub fn camera_state_from(device: &DeviceConfig) -> CameraState {
    let mut st = CameraState::default();
    if let VideoSourceConfig::TestPattern {
        width,
        height,
        bitrate_bps,
        ..
    } = &device.video
    {
        st.resolution = Resolution::new(*width, *height);
        st.bitrate_kbps = bitrate_bps / 1000;
    }
    st.audio = !matches!(device.audio, AudioSourceConfig::None);
    st.max_viewers = device.session.max_viewers.clamp(1, 10);
    st
}

/// A running node. Dropping it stops it (without a goodbye: the broker sends the last will).
pub struct RainmakerNode {
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
    node_id: String,
}

enum NetEvent {
    Connected,
    Disconnected(String),
    Remote(rumqttc::Publish),
}

impl RainmakerNode {
    /// Loads the certificate, key and CA (errors show now), then connects in the background and
    /// keeps reconnecting. Needs a tokio runtime.
    pub fn start(
        config: &RainmakerConfig,
        settings: NodeSettings,
        control: Arc<dyn DeviceControl>,
    ) -> Result<Self, RainmakerError> {
        let core = NodeCore::new(settings)?;
        let (host, port) = config.broker_address().map_err(RainmakerError::Settings)?;
        let tls = tls_config(config)?;
        let node_id = core.settings().node_id.clone();

        let mut options = MqttOptions::new(node_id.clone(), host, port);
        options.set_keep_alive(config.keep_alive);
        options.set_clean_session(true);
        options.set_max_packet_size(MAX_INCOMING_PACKET, MAX_OUTGOING_PACKET);
        options.set_request_channel_capacity(REQUEST_CAPACITY);
        options.set_inflight(16);
        let will = core.last_will();
        options.set_last_will(LastWill::new(
            will.topic,
            will.payload,
            qos(will.qos),
            will.retain,
        ));
        options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            Arc::new(tls),
        )));
        let mut transport_timeout = config.reconnect.attempt_timeout.as_secs().max(1);
        transport_timeout = transport_timeout.min(600);
        let (client, mut eventloop) = AsyncClient::new(options, REQUEST_CAPACITY);
        eventloop
            .network_options
            .set_connection_timeout(transport_timeout);

        let (net_tx, net_rx) = mpsc::channel(EVENT_CAPACITY);
        let remote_topic = core.remote_topic();
        let mut backoff = Backoff::new(config.reconnect.clone());
        let broker = config.broker.clone();
        let mqtt_task = tokio::spawn(async move {
            loop {
                let event = match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        backoff.reset();
                        info!(%broker, "RainMaker: connected");
                        NetEvent::Connected
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        if p.topic != remote_topic {
                            debug!(topic = %p.topic, "RainMaker: publish on another topic ignored");
                            continue;
                        }
                        NetEvent::Remote(p)
                    }
                    Ok(_) => continue,
                    Err(e) => {
                        let delay = backoff.next_delay();
                        warn!(%broker, "RainMaker: MQTT connection: {e}; retrying in {delay:?}");
                        if net_tx
                            .send(NetEvent::Disconnected(e.to_string()))
                            .await
                            .is_err()
                        {
                            return;
                        }
                        tokio::time::sleep(delay).await;
                        continue;
                    }
                };
                if net_tx.send(event).await.is_err() {
                    return;
                }
            }
        });

        let (stop_tx, stop_rx) = oneshot::channel();
        let task = tokio::spawn(run_node(core, client, net_rx, control, stop_rx, mqtt_task));
        Ok(Self {
            stop: Some(stop_tx),
            task: Some(task),
            node_id,
        })
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// Stops the node: publishes `{"Connectivity":{"Connected":false}}`, disconnects cleanly
    /// (the broker then drops the last will) and waits for the tasks to end (at most 2 s).
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(2), task).await;
        }
    }
}

impl Drop for RainmakerNode {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

fn qos(q: Qos) -> QoS {
    match q {
        Qos::AtMostOnce => QoS::AtMostOnce,
        Qos::AtLeastOnce => QoS::AtLeastOnce,
    }
}

async fn run_node(
    mut core: NodeCore,
    client: AsyncClient,
    mut net_rx: mpsc::Receiver<NetEvent>,
    control: Arc<dyn DeviceControl>,
    mut stop_rx: oneshot::Receiver<()>,
    mqtt_task: JoinHandle<()>,
) {
    let mut viewers = control.viewers();
    let (apply_tx, mut apply_rx) =
        mpsc::channel::<(u64, Change)>(super::core::MAX_PENDING_APPLIES + 1);
    let (applied_tx, mut applied_rx) =
        mpsc::channel::<(u64, Result<(), ControlError>)>(super::core::MAX_PENDING_APPLIES + 1);
    let applier = {
        let control = control.clone();
        tokio::spawn(async move {
            while let Some((id, change)) = apply_rx.recv().await {
                let result = match change {
                    Change::Control(c) => {
                        debug!(?c, "RainMaker: applying");
                        control.apply(c).await
                    }
                    // The name lives in the node's state (reported, not applied to media).
                    Change::Name(_) => Ok(()),
                };
                if applied_tx.send((id, result)).await.is_err() {
                    return;
                }
            }
        })
    };
    core.set_viewers(Instant::now(), *viewers.borrow_and_update());
    let mut viewers_open = true;
    let remote_topic = core.remote_topic();
    loop {
        let timeout = core.poll_timeout();
        tokio::select! {
            _ = &mut stop_rx => {
                if core.is_connected() {
                    let will = core.last_will();
                    let _ = client.try_publish(will.topic, qos(will.qos), false, super::core::LAST_WILL_PAYLOAD);
                    let _ = client.try_disconnect();
                    // Give the event loop a moment to send both.
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
                break;
            }
            event = net_rx.recv() => match event {
                Some(NetEvent::Connected) => {
                    if let Err(e) = client.try_subscribe(remote_topic.clone(), QoS::AtLeastOnce) {
                        warn!("RainMaker: cannot subscribe to {remote_topic}: {e}");
                    }
                    core.on_connected(Instant::now());
                }
                Some(NetEvent::Disconnected(why)) => {
                    debug!("RainMaker: disconnected: {why}");
                    core.on_disconnected();
                }
                Some(NetEvent::Remote(p)) => core.handle_remote(Instant::now(), &p.payload),
                None => break,
            },
            applied = applied_rx.recv() => match applied {
                Some((id, result)) => core.on_applied(Instant::now(), id, result),
                None => break,
            },
            changed = viewers.changed(), if viewers_open => {
                if changed.is_err() {
                    viewers_open = false;
                } else {
                    let n = *viewers.borrow_and_update();
                    core.set_viewers(Instant::now(), n);
                }
            }
            _ = sleep_until(timeout), if timeout.is_some() => core.handle_timeout(Instant::now()),
        }
        while let Some(out) = core.poll_output() {
            match out {
                Output::Publish(p) => {
                    if let Err(e) = client.try_publish(&p.topic, qos(p.qos), p.retain, p.payload) {
                        warn!(topic = %p.topic, "RainMaker: publish dropped: {e}");
                    }
                }
                Output::Apply { id, change } => {
                    if apply_tx.try_send((id, change)).is_err() {
                        core.on_applied(Instant::now(), id, Err(ControlError::Stopped));
                    }
                }
            }
        }
    }
    applier.abort();
    mqtt_task.abort();
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

fn read(path: &Path) -> Result<Vec<u8>, RainmakerError> {
    std::fs::read(path).map_err(|source| RainmakerError::Read {
        path: path.to_owned(),
        source,
    })
}

fn tls_config(config: &RainmakerConfig) -> Result<rustls::ClientConfig, RainmakerError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    match &config.ca_file {
        Some(ca) => {
            let pem = read(ca)?;
            let mut n = 0;
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert =
                    cert.map_err(|e| RainmakerError::Tls(format!("CA {}: {e}", ca.display())))?;
                roots
                    .add(cert)
                    .map_err(|e| RainmakerError::Tls(format!("CA {}: {e}", ca.display())))?;
                n += 1;
            }
            if n == 0 {
                return Err(RainmakerError::Tls(format!(
                    "CA {}: no PEM certificate",
                    ca.display()
                )));
            }
        }
        // The public web roots (AWS IoT's Amazon Root CA 1 is among them).
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let cert_pem = read(&config.cert_file)?;
    let certs = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| RainmakerError::Tls(format!("{}: {e}", config.cert_file.display())))?;
    if certs.is_empty() {
        return Err(RainmakerError::Tls(format!(
            "{}: no PEM certificate",
            config.cert_file.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_slice(&read(&config.key_file)?).map_err(|e| {
        RainmakerError::Tls(format!("private key {}: {e}", config.key_file.display()))
    })?;
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| RainmakerError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .map_err(|e| RainmakerError::Tls(format!("device certificate/key: {e}")))?;
    // AWS IoT Core takes MQTT on 443 only with this ALPN; harmless on 8883.
    if config.broker_address().map(|(_, p)| p) == Ok(443) {
        tls.alpn_protocols = vec![b"x-amzn-mqtt-ca".to_vec()];
    }
    Ok(tls)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_from_config_and_device() {
        let mut device = DeviceConfig {
            video: VideoSourceConfig::TestPattern {
                width: 800,
                height: 600,
                fps: 30,
                bitrate_bps: 2_000_000,
                gop: 30,
            },
            audio: AudioSourceConfig::None,
            ..DeviceConfig::default()
        };
        device.session.max_viewers = 50;
        let st = camera_state_from(&device);
        assert_eq!(st.resolution, Resolution::new(800, 600));
        assert_eq!(
            (st.bitrate_kbps, st.audio, st.max_viewers),
            (2000, false, 10)
        );
        let mut rm = RainmakerConfig::new("mqtts://b", "n1", "/c", "/k");
        rm.name = Some("Porch".into());
        rm.channel = Some("front".into());
        let s = settings_from(&rm, st);
        assert_eq!(s.initial.name, "Porch");
        assert_eq!(s.channel.as_deref(), Some("front"));
        let valid: Vec<String> = s.resolutions.iter().map(|r| r.to_string()).collect();
        assert_eq!(valid, ["320x240", "640x480", "800x600", "1280x720"]);
    }

    #[tokio::test]
    async fn start_reports_bad_files_at_once() {
        struct Nothing(tokio::sync::watch::Sender<usize>);
        impl DeviceControl for Nothing {
            fn apply(&self, _: crate::Control) -> crate::control::ControlFuture<'_> {
                Box::pin(async { Ok(()) })
            }
            fn viewers(&self) -> tokio::sync::watch::Receiver<usize> {
                self.0.subscribe()
            }
        }
        let control = Arc::new(Nothing(tokio::sync::watch::channel(0).0));
        let rm = RainmakerConfig::new("mqtts://127.0.0.1:1", "n1", "/nonexistent/c", "/k");
        let err = RainmakerNode::start(
            &rm,
            settings_from(&rm, CameraState::default()),
            control.clone(),
        )
        .err()
        .expect("missing files");
        assert!(matches!(err, RainmakerError::Read { .. }), "{err}");
        let mut bad = rm.clone();
        bad.broker = "mqtt://127.0.0.1:1".into();
        let err = RainmakerNode::start(&bad, settings_from(&bad, CameraState::default()), control)
            .err()
            .expect("plain mqtt refused");
        assert!(matches!(err, RainmakerError::Settings(_)), "{err}");
    }
}
