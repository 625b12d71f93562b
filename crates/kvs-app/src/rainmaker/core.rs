//! `NodeCore`: the RainMaker node's state and policy, without I/O.
//!
//! Owns: the camera device's params and their confirmed values, the JSON the node publishes
//! (node config, init state, reports, alerts, connectivity), the checks on `params/remote`
//! writes, the applies in flight and the coalescing of `Viewers` reports. Time comes in with
//! each input; outputs ([`Output`]) and the next timeout are polled.
//!
//! Must not touch: sockets, MQTT sessions, the device itself (an [`Output::Apply`] asks the
//! application, which answers with [`NodeCore::on_applied`]).
//!
//! Rules (docs/RAINMAKER.md):
//! - a write is checked first; a bad one (read-only param, wrong type, out of bounds, not a
//!   multiple of the step, not in `valid_strs`, too long a name) is rejected — never clamped —
//!   the value stays, and an alert goes to `node/<id>/alert`;
//! - unknown devices and params, malformed JSON and payloads over [`MAX_REMOTE_PAYLOAD`] are
//!   ignored with a log line;
//! - a write equal to the value already asked for changes nothing and is not reported;
//! - a valid write becomes an [`Output::Apply`]; once every apply of one payload is answered,
//!   one `params/local` report carries the params whose confirmed value changed;
//! - `Viewers` is reported at most once per [`VIEWERS_REPORT_INTERVAL`], the latest value wins;
//! - while disconnected nothing is published (the init state after reconnecting carries it all).

use crate::control::{Control, ControlError};
use serde_json::{json, Map, Value};
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

use super::RainmakerError;

/// The camera device's type.
pub const DEVICE_TYPE: &str = "esp.device.camera";
/// `config_version` of the node config.
pub const CONFIG_VERSION: &str = "2020-03-20";
/// Largest `params/remote` payload looked at; larger ones are dropped before parsing.
pub const MAX_REMOTE_PAYLOAD: usize = 16 * 1024;
/// `Viewers` is reported at most this often.
pub const VIEWERS_REPORT_INTERVAL: Duration = Duration::from_secs(1);
/// Applies asked of the application and not yet answered; writes beyond are rejected (alert).
pub const MAX_PENDING_APPLIES: usize = 32;
/// Publishes waiting to be polled; further ones are dropped and counted.
pub const MAX_QUEUED_PUBLISHES: usize = 256;
/// Longest `Name` in bytes.
pub const MAX_NAME_LEN: usize = 64;
/// The payload of the last will (on `params/local`).
pub const LAST_WILL_PAYLOAD: &str = r#"{"Connectivity":{"Connected":false}}"#;
/// Published on `params/local` after the init state, on every connect.
pub const CONNECTED_PAYLOAD: &str = r#"{"Connectivity":{"Connected":true}}"#;
/// The key of an alert's text (`{"esp.alert.str":"…"}`), as RainMaker alerts carry it.
pub const ALERT_KEY: &str = "esp.alert.str";

/// Param names of the camera device.
pub mod param {
    pub const NAME: &str = "Name";
    pub const CHANNEL: &str = "Channel";
    pub const STREAM: &str = "Stream";
    pub const RESOLUTION: &str = "Resolution";
    pub const BITRATE: &str = "Bitrate";
    pub const AUDIO: &str = "Audio";
    pub const MAX_VIEWERS: &str = "Max Viewers";
    pub const VIEWERS: &str = "Viewers";
}

/// A picture size, written `WIDTHxHEIGHT` in params.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Resolution {
    pub width: u32,
    pub height: u32,
}

impl Resolution {
    pub const fn new(width: u32, height: u32) -> Self {
        Self { width, height }
    }

    /// Parses `640x480`.
    pub fn parse(s: &str) -> Option<Self> {
        let (w, h) = s.split_once('x')?;
        let ok = |p: &str| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit());
        if !ok(w) || !ok(h) {
            return None;
        }
        Some(Self::new(w.parse().ok()?, h.parse().ok()?))
    }
}

impl fmt::Display for Resolution {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}x{}", self.width, self.height)
    }
}

/// `{min, max, step}` of an int param.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    pub min: i64,
    pub max: i64,
    pub step: i64,
}

impl Bounds {
    fn check(&self, v: i64) -> Result<(), String> {
        if v < self.min || v > self.max {
            return Err(format!("{v} is out of bounds [{}, {}]", self.min, self.max));
        }
        if self.step > 1 && (v - self.min) % self.step != 0 {
            return Err(format!(
                "{v} is not {} plus a multiple of the step {}",
                self.min, self.step
            ));
        }
        Ok(())
    }

    fn to_json(self) -> Value {
        json!({"min": self.min, "max": self.max, "step": self.step})
    }
}

/// `Max Viewers` bounds.
pub const MAX_VIEWERS_BOUNDS: Bounds = Bounds {
    min: 1,
    max: 10,
    step: 1,
};

/// The camera's values as reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CameraState {
    pub name: String,
    pub streaming: bool,
    pub resolution: Resolution,
    pub bitrate_kbps: u32,
    pub audio: bool,
    pub max_viewers: usize,
    pub viewers: usize,
}

impl Default for CameraState {
    fn default() -> Self {
        Self {
            name: "Camera".into(),
            streaming: true,
            resolution: Resolution::new(640, 480),
            bitrate_kbps: 1000,
            audio: true,
            max_viewers: 10,
            viewers: 0,
        }
    }
}

/// The node config's `info`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    pub name: String,
    pub fw_version: String,
    pub model: String,
    pub project_name: String,
    pub platform: String,
}

impl Default for NodeInfo {
    fn default() -> Self {
        Self {
            name: "WebRTC Camera".into(),
            fw_version: env!("CARGO_PKG_VERSION").into(),
            model: "kvs-webrtc".into(),
            project_name: "kvs-webrtc".into(),
            platform: format!("{}-{}", std::env::consts::OS, std::env::consts::ARCH),
        }
    }
}

/// Everything a [`NodeCore`] is made from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSettings {
    /// The node id: MQTT client id, topic part, IoT thing name.
    pub node_id: String,
    /// The device's name in the config and in param messages.
    pub device_name: String,
    /// `Channel`'s value; `esp-v1-<node_id>` when `None`.
    pub channel: Option<String>,
    /// `$aws/rules/<rule>` put in front of every published topic (AWS IoT basic ingest).
    pub basic_ingest_prefix: Option<String>,
    pub info: NodeInfo,
    /// `Resolution`'s `valid_strs`.
    pub resolutions: Vec<Resolution>,
    /// `Bitrate`'s bounds (kbit/s).
    pub bitrate_bounds: Bounds,
    /// Values reported before any write.
    pub initial: CameraState,
}

impl NodeSettings {
    /// Defaults around `node_id`: device "Camera", 320x240/640x480/1280x720, 100–4000 kbit/s
    /// in steps of 50.
    pub fn new(node_id: impl Into<String>) -> Self {
        Self {
            node_id: node_id.into(),
            device_name: "Camera".into(),
            channel: None,
            basic_ingest_prefix: None,
            info: NodeInfo::default(),
            resolutions: vec![
                Resolution::new(320, 240),
                Resolution::new(640, 480),
                Resolution::new(1280, 720),
            ],
            bitrate_bounds: Bounds {
                min: 100,
                max: 4000,
                step: 50,
            },
            initial: CameraState::default(),
        }
    }

    fn validate(&self) -> Result<(), String> {
        if !is_valid_node_id(&self.node_id) {
            return Err(format!(
                "node id must be 1-128 characters of [A-Za-z0-9_.-], got {:?}",
                self.node_id
            ));
        }
        if self.device_name.is_empty()
            || self.device_name.len() > MAX_NAME_LEN
            || self.device_name == "Connectivity"
        {
            return Err(format!("invalid device name {:?}", self.device_name));
        }
        if let Some(prefix) = &self.basic_ingest_prefix {
            if !is_valid_ingest_prefix(prefix) {
                return Err(format!(
                    "basic-ingest prefix must be $aws/rules/<rule name>, got {prefix:?}"
                ));
            }
        }
        let b = self.bitrate_bounds;
        if b.min < 1 || b.max < b.min || b.step < 1 || b.max > u32::MAX as i64 {
            return Err(format!("invalid bitrate bounds {b:?}"));
        }
        if self.resolutions.is_empty() {
            return Err("no resolutions".into());
        }
        Ok(())
    }
}

pub use crate::config::{is_valid_ingest_prefix, is_valid_node_id};

/// MQTT quality of service of a publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Qos {
    AtMostOnce,
    AtLeastOnce,
}

/// One MQTT publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos: Qos,
    pub retain: bool,
}

impl Publish {
    /// The payload as JSON (tests, logs).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.payload).unwrap_or(Value::Null)
    }
}

/// What the application is asked to carry out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A change to the running device.
    Control(Control),
    /// The camera's `Name` (the application may store it; the device is not touched).
    Name(String),
}

/// What the core asks of its driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    Publish(Publish),
    /// Carry out `change`, then answer [`NodeCore::on_applied`] with `id`.
    Apply {
        id: u64,
        change: Change,
    },
}

/// Counters (logs, tests).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeStats {
    /// Payloads or entries ignored: malformed, oversized, unknown device or param.
    pub ignored: u64,
    /// Writes rejected with an alert.
    pub rejected: u64,
    /// Applies answered with an error.
    pub failed: u64,
    /// Publishes dropped because the queue was full.
    pub dropped_publishes: u64,
}

/// A param value as the core keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum ParamValue {
    Name(String),
    Streaming(bool),
    Resolution(Resolution),
    Bitrate(u32),
    Audio(bool),
    MaxViewers(usize),
}

impl ParamValue {
    fn param(&self) -> &'static str {
        match self {
            Self::Name(_) => param::NAME,
            Self::Streaming(_) => param::STREAM,
            Self::Resolution(_) => param::RESOLUTION,
            Self::Bitrate(_) => param::BITRATE,
            Self::Audio(_) => param::AUDIO,
            Self::MaxViewers(_) => param::MAX_VIEWERS,
        }
    }

    fn to_json(&self) -> Value {
        match self {
            Self::Name(s) => json!(s),
            Self::Streaming(b) | Self::Audio(b) => json!(b),
            Self::Resolution(r) => json!(r.to_string()),
            Self::Bitrate(k) => json!(k),
            Self::MaxViewers(n) => json!(n),
        }
    }

    fn change(&self) -> Change {
        match self {
            Self::Name(s) => Change::Name(s.clone()),
            Self::Streaming(b) => Change::Control(Control::Streaming(*b)),
            Self::Resolution(r) => Change::Control(Control::Resolution {
                width: r.width,
                height: r.height,
            }),
            Self::Bitrate(k) => Change::Control(Control::BitrateKbps(*k)),
            Self::Audio(b) => Change::Control(Control::Audio(*b)),
            Self::MaxViewers(n) => Change::Control(Control::MaxViewers(*n)),
        }
    }
}

#[derive(Debug)]
struct PendingApply {
    id: u64,
    batch: u64,
    value: ParamValue,
}

#[derive(Debug, Default)]
struct Batch {
    remaining: usize,
    changed: Map<String, Value>,
}

/// The node's state machine (see the module doc).
#[derive(Debug)]
pub struct NodeCore {
    settings: NodeSettings,
    channel: String,
    state: CameraState,
    connected: bool,
    outputs: VecDeque<Output>,
    queued_publishes: usize,
    pending: VecDeque<PendingApply>,
    batches: HashMap<u64, Batch>,
    next_id: u64,
    viewers_reported: Option<usize>,
    viewers_reported_at: Option<Instant>,
    viewers_dirty: bool,
    stats: NodeStats,
}

impl NodeCore {
    /// A node with `settings`, disconnected, reporting `settings.initial`.
    pub fn new(settings: NodeSettings) -> Result<Self, RainmakerError> {
        settings.validate().map_err(RainmakerError::Settings)?;
        let channel = settings
            .channel
            .clone()
            .unwrap_or_else(|| format!("esp-v1-{}", settings.node_id));
        Ok(Self {
            state: settings.initial.clone(),
            settings,
            channel,
            connected: false,
            outputs: VecDeque::new(),
            queued_publishes: 0,
            pending: VecDeque::new(),
            batches: HashMap::new(),
            next_id: 1,
            viewers_reported: None,
            viewers_reported_at: None,
            viewers_dirty: false,
            stats: NodeStats::default(),
        })
    }

    pub fn settings(&self) -> &NodeSettings {
        &self.settings
    }

    /// The confirmed values.
    pub fn state(&self) -> &CameraState {
        &self.state
    }

    /// `Channel`'s value.
    pub fn channel(&self) -> &str {
        &self.channel
    }

    pub fn stats(&self) -> NodeStats {
        self.stats
    }

    pub fn is_connected(&self) -> bool {
        self.connected
    }

    /// The topic the node publishes `suffix` on: `node/<id>/<suffix>`, behind the basic-ingest
    /// prefix when one is set.
    pub fn publish_topic(&self, suffix: &str) -> String {
        match &self.settings.basic_ingest_prefix {
            Some(prefix) => format!("{prefix}/node/{}/{suffix}", self.settings.node_id),
            None => format!("node/{}/{suffix}", self.settings.node_id),
        }
    }

    /// The topic writes arrive on (`node/<id>/params/remote`, never prefixed).
    pub fn remote_topic(&self) -> String {
        format!("node/{}/params/remote", self.settings.node_id)
    }

    /// The last will to register with the broker: `{"Connectivity":{"Connected":false}}` on
    /// `params/local`, QoS 1, not retained.
    pub fn last_will(&self) -> Publish {
        Publish {
            topic: self.publish_topic("params/local"),
            payload: LAST_WILL_PAYLOAD.as_bytes().to_vec(),
            qos: Qos::AtLeastOnce,
            retain: false,
        }
    }

    /// The node config (published on `node/<id>/config`).
    pub fn config_json(&self) -> Value {
        let s = &self.settings;
        let rw = json!(["read", "write"]);
        let ro = json!(["read"]);
        let valid: Vec<String> = s.resolutions.iter().map(|r| r.to_string()).collect();
        json!({
            "node_id": s.node_id,
            "config_version": CONFIG_VERSION,
            "info": {
                "name": s.info.name,
                "fw_version": s.info.fw_version,
                "type": "Camera",
                "model": s.info.model,
                "project_name": s.info.project_name,
                "platform": s.info.platform,
            },
            "attributes": [],
            "devices": [{
                "name": s.device_name,
                "type": DEVICE_TYPE,
                "primary": param::STREAM,
                "params": [
                    {"name": param::NAME, "type": "esp.param.name", "data_type": "string",
                     "properties": rw},
                    {"name": param::CHANNEL, "type": "esp.param.channel", "data_type": "string",
                     "properties": ro},
                    {"name": param::STREAM, "type": "esp.param.power", "data_type": "bool",
                     "properties": rw, "ui_type": "esp.ui.toggle"},
                    {"name": param::RESOLUTION, "type": "esp.param.resolution",
                     "data_type": "string", "properties": rw, "valid_strs": valid,
                     "ui_type": "esp.ui.dropdown"},
                    {"name": param::BITRATE, "type": "esp.param.bitrate", "data_type": "int",
                     "properties": rw, "bounds": s.bitrate_bounds.to_json(),
                     "ui_type": "esp.ui.slider"},
                    {"name": param::AUDIO, "type": "esp.param.audio", "data_type": "bool",
                     "properties": rw, "ui_type": "esp.ui.toggle"},
                    {"name": param::MAX_VIEWERS, "type": "esp.param.max-viewers",
                     "data_type": "int", "properties": rw,
                     "bounds": MAX_VIEWERS_BOUNDS.to_json(), "ui_type": "esp.ui.slider"},
                    {"name": param::VIEWERS, "type": "esp.param.viewers", "data_type": "int",
                     "properties": ro, "ui_type": "esp.ui.text"},
                ],
            }],
            "services": [],
        })
    }

    /// Every param's value (published on `params/local/init`).
    pub fn init_json(&self) -> Value {
        let st = &self.state;
        let mut params = Map::new();
        params.insert(param::NAME.into(), json!(st.name));
        params.insert(param::CHANNEL.into(), json!(self.channel));
        params.insert(param::STREAM.into(), json!(st.streaming));
        params.insert(param::RESOLUTION.into(), json!(st.resolution.to_string()));
        params.insert(param::BITRATE.into(), json!(st.bitrate_kbps));
        params.insert(param::AUDIO.into(), json!(st.audio));
        params.insert(param::MAX_VIEWERS.into(), json!(st.max_viewers));
        params.insert(param::VIEWERS.into(), json!(st.viewers));
        self.device_object(params)
    }

    fn device_object(&self, params: Map<String, Value>) -> Value {
        let mut top = Map::new();
        top.insert(self.settings.device_name.clone(), Value::Object(params));
        Value::Object(top)
    }

    /// The MQTT session is up (CONNACK received, `params/remote` subscribed or being so):
    /// publishes the config, the init state and `Connected: true`.
    pub fn on_connected(&mut self, now: Instant) {
        self.connected = true;
        let config = self.config_json();
        self.publish("config", &config);
        let init = self.init_json();
        self.publish("params/local/init", &init);
        self.publish_raw("params/local", CONNECTED_PAYLOAD.as_bytes().to_vec());
        self.viewers_reported = Some(self.state.viewers);
        self.viewers_reported_at = Some(now);
        self.viewers_dirty = false;
    }

    /// The MQTT session is gone; nothing is published until [`Self::on_connected`].
    pub fn on_disconnected(&mut self) {
        if self.connected {
            info!("RainMaker: disconnected from the broker");
        }
        self.connected = false;
        self.viewers_dirty = false;
    }

    /// A `params/remote` payload.
    pub fn handle_remote(&mut self, _now: Instant, payload: &[u8]) {
        if payload.len() > MAX_REMOTE_PAYLOAD {
            warn!(
                len = payload.len(),
                "RainMaker: params/remote payload over {MAX_REMOTE_PAYLOAD} bytes ignored"
            );
            self.stats.ignored += 1;
            return;
        }
        let value: Value = match serde_json::from_slice(payload) {
            Ok(v) => v,
            Err(e) => {
                warn!("RainMaker: malformed params/remote payload ignored: {e}");
                self.stats.ignored += 1;
                return;
            }
        };
        let Value::Object(devices) = value else {
            warn!("RainMaker: params/remote payload is not an object; ignored");
            self.stats.ignored += 1;
            return;
        };
        let batch = self.next_id;
        let mut applies = 0;
        for (device, params) in devices {
            if device != self.settings.device_name {
                warn!(device = %truncate(&device), "RainMaker: write to an unknown device ignored");
                self.stats.ignored += 1;
                continue;
            }
            let Value::Object(params) = params else {
                warn!("RainMaker: device entry is not an object; ignored");
                self.stats.ignored += 1;
                continue;
            };
            for (name, v) in params {
                match self.check_write(&name, &v) {
                    Check::Unknown => {
                        warn!(param = %truncate(&name), "RainMaker: write to an unknown param ignored");
                        self.stats.ignored += 1;
                    }
                    Check::Rejected(why) => {
                        self.stats.rejected += 1;
                        let text = format!("{}.{name}: {why}", self.settings.device_name);
                        warn!("RainMaker: write rejected: {text}");
                        self.alert(&text);
                    }
                    Check::Unchanged => {
                        debug!(param = %name, "RainMaker: write equal to the current value");
                    }
                    Check::Valid(value) => {
                        if self.pending.len() >= MAX_PENDING_APPLIES {
                            self.stats.rejected += 1;
                            let text = format!(
                                "{}.{name}: busy ({MAX_PENDING_APPLIES} changes in progress)",
                                self.settings.device_name
                            );
                            warn!("RainMaker: write rejected: {text}");
                            self.alert(&text);
                            continue;
                        }
                        let id = self.next_id;
                        self.next_id += 1;
                        self.outputs.push_back(Output::Apply {
                            id,
                            change: value.change(),
                        });
                        self.pending.push_back(PendingApply { id, batch, value });
                        applies += 1;
                    }
                }
            }
        }
        if applies > 0 {
            self.batches.insert(
                batch,
                Batch {
                    remaining: applies,
                    changed: Map::new(),
                },
            );
        }
    }

    /// The application's answer to `Output::Apply { id, .. }`.
    pub fn on_applied(&mut self, _now: Instant, id: u64, result: Result<(), ControlError>) {
        let Some(pos) = self.pending.iter().position(|p| p.id == id) else {
            debug!(id, "RainMaker: answer to an unknown apply");
            return;
        };
        let PendingApply { batch, value, .. } = self.pending.remove(pos).expect("found");
        match result {
            Ok(()) => {
                if self.set_confirmed(&value) {
                    if let Some(b) = self.batches.get_mut(&batch) {
                        b.changed.insert(value.param().to_owned(), value.to_json());
                    }
                }
            }
            Err(e) => {
                self.stats.failed += 1;
                let text = format!(
                    "{}.{}: not applied: {e}",
                    self.settings.device_name,
                    value.param()
                );
                warn!("RainMaker: {text}");
                self.alert(&text);
            }
        }
        let done = match self.batches.get_mut(&batch) {
            Some(b) => {
                b.remaining = b.remaining.saturating_sub(1);
                b.remaining == 0
            }
            None => false,
        };
        if done {
            let b = self.batches.remove(&batch).expect("present");
            if !b.changed.is_empty() {
                let report = self.device_object(b.changed);
                self.publish("params/local", &report);
            }
        }
    }

    /// The number of live viewers changed.
    pub fn set_viewers(&mut self, now: Instant, viewers: usize) {
        self.state.viewers = viewers;
        if !self.connected {
            return;
        }
        if self.viewers_reported == Some(viewers) {
            self.viewers_dirty = false;
            return;
        }
        match self.viewers_reported_at {
            Some(at) if now < at + VIEWERS_REPORT_INTERVAL => self.viewers_dirty = true,
            _ => self.report_viewers(now),
        }
    }

    /// Call at (or after) [`Self::poll_timeout`].
    pub fn handle_timeout(&mut self, now: Instant) {
        if !self.viewers_dirty {
            return;
        }
        if let Some(at) = self.viewers_reported_at {
            if now < at + VIEWERS_REPORT_INTERVAL {
                return;
            }
        }
        self.viewers_dirty = false;
        if self.viewers_reported != Some(self.state.viewers) {
            self.report_viewers(now);
        }
    }

    /// When [`Self::handle_timeout`] wants to run next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if !self.viewers_dirty {
            return None;
        }
        self.viewers_reported_at
            .map(|at| at + VIEWERS_REPORT_INTERVAL)
    }

    /// The next thing to do.
    pub fn poll_output(&mut self) -> Option<Output> {
        let out = self.outputs.pop_front()?;
        if matches!(out, Output::Publish(_)) {
            self.queued_publishes -= 1;
        }
        Some(out)
    }

    fn report_viewers(&mut self, now: Instant) {
        let mut params = Map::new();
        params.insert(param::VIEWERS.into(), json!(self.state.viewers));
        let report = self.device_object(params);
        self.publish("params/local", &report);
        self.viewers_reported = Some(self.state.viewers);
        self.viewers_reported_at = Some(now);
        self.viewers_dirty = false;
    }

    fn alert(&mut self, text: &str) {
        let mut body = Map::new();
        body.insert(ALERT_KEY.into(), json!(text));
        self.publish("alert", &Value::Object(body));
    }

    fn publish(&mut self, suffix: &str, value: &Value) {
        let payload = serde_json::to_vec(value).expect("JSON values serialize");
        self.publish_to(suffix, payload);
    }

    fn publish_raw(&mut self, suffix: &str, payload: Vec<u8>) {
        self.publish_to(suffix, payload);
    }

    fn publish_to(&mut self, suffix: &str, payload: Vec<u8>) {
        if !self.connected {
            debug!(suffix, "RainMaker: not connected; publish skipped");
            return;
        }
        if self.queued_publishes >= MAX_QUEUED_PUBLISHES {
            self.stats.dropped_publishes += 1;
            warn!(suffix, "RainMaker: publish queue full; dropped");
            return;
        }
        self.queued_publishes += 1;
        self.outputs.push_back(Output::Publish(Publish {
            topic: self.publish_topic(suffix),
            payload,
            qos: Qos::AtLeastOnce,
            retain: false,
        }));
    }

    /// Whether `value` differs from the confirmed state; updates it.
    fn set_confirmed(&mut self, value: &ParamValue) -> bool {
        let st = &mut self.state;
        macro_rules! set {
            ($field:expr, $v:expr) => {{
                let changed = $field != $v;
                $field = $v;
                changed
            }};
        }
        match value {
            ParamValue::Name(s) => set!(st.name, s.clone()),
            ParamValue::Streaming(b) => set!(st.streaming, *b),
            ParamValue::Resolution(r) => set!(st.resolution, *r),
            ParamValue::Bitrate(k) => set!(st.bitrate_kbps, *k),
            ParamValue::Audio(b) => set!(st.audio, *b),
            ParamValue::MaxViewers(n) => set!(st.max_viewers, *n),
        }
    }

    /// The value a param will have once what is in flight is applied.
    fn target(&self, param: &str) -> ParamValue {
        if let Some(p) = self.pending.iter().rev().find(|p| p.value.param() == param) {
            return p.value.clone();
        }
        let st = &self.state;
        match param {
            param::NAME => ParamValue::Name(st.name.clone()),
            param::STREAM => ParamValue::Streaming(st.streaming),
            param::RESOLUTION => ParamValue::Resolution(st.resolution),
            param::BITRATE => ParamValue::Bitrate(st.bitrate_kbps),
            param::AUDIO => ParamValue::Audio(st.audio),
            _ => ParamValue::MaxViewers(st.max_viewers),
        }
    }

    fn check_write(&self, name: &str, v: &Value) -> Check {
        let value = match name {
            param::CHANNEL | param::VIEWERS => {
                return Check::Rejected("read-only".into());
            }
            param::NAME => match v.as_str() {
                Some(s) if s.is_empty() || s.len() > MAX_NAME_LEN => {
                    return Check::Rejected(format!("must be 1-{MAX_NAME_LEN} bytes"));
                }
                Some(s) if s.chars().any(char::is_control) => {
                    return Check::Rejected("control characters are not allowed".into());
                }
                Some(s) => ParamValue::Name(s.to_owned()),
                None => return Check::Rejected(wrong_type("a string", v)),
            },
            param::STREAM | param::AUDIO => match v.as_bool() {
                Some(b) if name == param::STREAM => ParamValue::Streaming(b),
                Some(b) => ParamValue::Audio(b),
                None => return Check::Rejected(wrong_type("a bool", v)),
            },
            param::RESOLUTION => match v.as_str() {
                Some(s) => {
                    match Resolution::parse(s).filter(|r| self.settings.resolutions.contains(r)) {
                        Some(r) => ParamValue::Resolution(r),
                        None => {
                            let valid: Vec<String> = self
                                .settings
                                .resolutions
                                .iter()
                                .map(|r| r.to_string())
                                .collect();
                            return Check::Rejected(format!(
                                "{:?} is not one of {}",
                                truncate(s),
                                valid.join(", ")
                            ));
                        }
                    }
                }
                None => return Check::Rejected(wrong_type("a string", v)),
            },
            param::BITRATE | param::MAX_VIEWERS => {
                let Some(n) = v.as_i64() else {
                    return Check::Rejected(wrong_type("an integer", v));
                };
                let bounds = if name == param::BITRATE {
                    self.settings.bitrate_bounds
                } else {
                    MAX_VIEWERS_BOUNDS
                };
                if let Err(why) = bounds.check(n) {
                    return Check::Rejected(why);
                }
                if name == param::BITRATE {
                    ParamValue::Bitrate(n as u32)
                } else {
                    ParamValue::MaxViewers(n as usize)
                }
            }
            _ => return Check::Unknown,
        };
        if self.target(name) == value {
            Check::Unchanged
        } else {
            Check::Valid(value)
        }
    }
}

enum Check {
    Unknown,
    Rejected(String),
    Unchanged,
    Valid(ParamValue),
}

fn wrong_type(expected: &str, v: &Value) -> String {
    let got = match v {
        Value::Null => "null",
        Value::Bool(_) => "a bool",
        Value::Number(n) if n.is_i64() || n.is_u64() => "an integer out of range",
        Value::Number(_) => "a number with a fraction",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    };
    format!("must be {expected}, got {got}")
}

/// At most 64 characters of remote text in logs and alerts.
fn truncate(s: &str) -> String {
    if s.len() <= 64 {
        return s.to_owned();
    }
    let mut end = 64;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
#[path = "core_tests.rs"]
mod tests;
