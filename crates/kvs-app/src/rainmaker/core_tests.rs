//! `NodeCore` in virtual time: every output is checked exactly.

use super::*;

fn t0() -> Instant {
    Instant::now()
}

fn ms(base: Instant, ms: u64) -> Instant {
    base + Duration::from_millis(ms)
}

fn core() -> NodeCore {
    NodeCore::new(NodeSettings::new("node1")).unwrap()
}

fn connected(now: Instant) -> NodeCore {
    let mut c = core();
    c.on_connected(now);
    drain(&mut c);
    c
}

fn drain(c: &mut NodeCore) -> Vec<Output> {
    std::iter::from_fn(|| c.poll_output()).collect()
}

fn publishes(outs: &[Output]) -> Vec<(String, Value)> {
    outs.iter()
        .filter_map(|o| match o {
            Output::Publish(p) => Some((p.topic.clone(), p.json())),
            _ => None,
        })
        .collect()
}

fn applies(outs: &[Output]) -> Vec<(u64, Change)> {
    outs.iter()
        .filter_map(|o| match o {
            Output::Apply { id, change } => Some((*id, change.clone())),
            _ => None,
        })
        .collect()
}

fn alerts(outs: &[Output]) -> Vec<String> {
    publishes(outs)
        .into_iter()
        .filter(|(t, _)| t == "node/node1/alert")
        .map(|(_, v)| v[ALERT_KEY].as_str().unwrap().to_owned())
        .collect()
}

/// Write `payload`, confirm every apply with Ok, return (applies, publishes after confirming).
fn write_ok(c: &mut NodeCore, now: Instant, payload: &str) -> (Vec<Change>, Vec<(String, Value)>) {
    c.handle_remote(now, payload.as_bytes());
    let outs = drain(c);
    let asked = applies(&outs);
    let mut pubs = publishes(&outs);
    for (id, _) in &asked {
        c.on_applied(now, *id, Ok(()));
    }
    pubs.extend(publishes(&drain(c)));
    (asked.into_iter().map(|(_, ch)| ch).collect(), pubs)
}

#[test]
fn connect_publishes_config_init_and_connected_in_order() {
    let now = t0();
    let mut c = core();
    assert!(drain(&mut c).is_empty());
    c.on_connected(now);
    let pubs = publishes(&drain(&mut c));
    let topics: Vec<&str> = pubs.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(
        topics,
        [
            "node/node1/config",
            "node/node1/params/local/init",
            "node/node1/params/local"
        ]
    );
    let config = &pubs[0].1;
    assert_eq!(config["node_id"], "node1");
    assert_eq!(config["config_version"], CONFIG_VERSION);
    assert_eq!(config["info"]["name"], "WebRTC Camera");
    assert_eq!(config["info"]["type"], "Camera");
    for key in ["fw_version", "model", "project_name", "platform"] {
        assert!(
            config["info"][key].as_str().is_some_and(|s| !s.is_empty()),
            "{key}"
        );
    }
    assert_eq!(config["services"], json!([]));
    let devices = config["devices"].as_array().unwrap();
    assert_eq!(devices.len(), 1);
    assert_eq!(devices[0]["name"], "Camera");
    assert_eq!(devices[0]["type"], DEVICE_TYPE);
    let params = devices[0]["params"].as_array().unwrap();
    let by_name = |n: &str| params.iter().find(|p| p["name"] == n).unwrap().clone();
    assert_eq!(params.len(), 8);
    let name = by_name("Name");
    assert_eq!(
        (name["type"].as_str(), name["data_type"].as_str()),
        (Some("esp.param.name"), Some("string"))
    );
    assert_eq!(name["properties"], json!(["read", "write"]));
    let channel = by_name("Channel");
    assert_eq!(channel["type"], "esp.param.channel");
    assert_eq!(channel["properties"], json!(["read"]));
    assert_eq!(by_name("Stream")["data_type"], "bool");
    assert_eq!(by_name("Stream")["type"], "esp.param.power");
    assert_eq!(
        by_name("Resolution")["valid_strs"],
        json!(["320x240", "640x480", "1280x720"])
    );
    assert_eq!(
        by_name("Bitrate")["bounds"],
        json!({"min": 100, "max": 4000, "step": 50})
    );
    assert_eq!(by_name("Bitrate")["data_type"], "int");
    assert_eq!(by_name("Audio")["data_type"], "bool");
    assert_eq!(
        by_name("Max Viewers")["bounds"],
        json!({"min": 1, "max": 10, "step": 1})
    );
    assert_eq!(by_name("Viewers")["properties"], json!(["read"]));

    assert_eq!(
        pubs[1].1,
        json!({"Camera": {"Name": "Camera", "Channel": "esp-v1-node1", "Stream": true,
            "Resolution": "640x480", "Bitrate": 1000, "Audio": true, "Max Viewers": 10,
            "Viewers": 0}})
    );
    assert_eq!(pubs[2].1, json!({"Connectivity": {"Connected": true}}));
    let will = c.last_will();
    assert_eq!(will.topic, "node/node1/params/local");
    assert_eq!(will.json(), json!({"Connectivity": {"Connected": false}}));
    assert_eq!(will.qos, Qos::AtLeastOnce);
    assert_eq!(c.remote_topic(), "node/node1/params/remote");
}

#[test]
fn basic_ingest_prefix_goes_in_front_of_publishes_only_and_channel_override() {
    let mut s = NodeSettings::new("n-2");
    s.basic_ingest_prefix = Some("$aws/rules/esp_node".into());
    s.channel = Some("front-door".into());
    let mut c = NodeCore::new(s).unwrap();
    c.on_connected(t0());
    let pubs = publishes(&drain(&mut c));
    assert_eq!(pubs[0].0, "$aws/rules/esp_node/node/n-2/config");
    assert_eq!(pubs[1].0, "$aws/rules/esp_node/node/n-2/params/local/init");
    assert_eq!(pubs[1].1["Camera"]["Channel"], "front-door");
    assert_eq!(
        c.last_will().topic,
        "$aws/rules/esp_node/node/n-2/params/local"
    );
    assert_eq!(c.remote_topic(), "node/n-2/params/remote");

    for bad in ["", "a/b", "a+", "#"] {
        assert!(NodeCore::new(NodeSettings::new(bad)).is_err(), "{bad:?}");
    }
    let mut s = NodeSettings::new("n");
    s.basic_ingest_prefix = Some("$aws/rules/".into());
    assert!(NodeCore::new(s).is_err());
}

#[test]
fn valid_writes_ask_for_controls_and_report_only_what_changed_after_confirmation() {
    let now = t0();
    let mut c = connected(now);
    c.handle_remote(now, br#"{"Camera":{"Stream":false,"Bitrate":1500}}"#);
    let outs = drain(&mut c);
    // Nothing is reported before the application confirms.
    assert!(publishes(&outs).is_empty());
    let asked = applies(&outs);
    assert_eq!(
        asked.iter().map(|(_, ch)| ch.clone()).collect::<Vec<_>>(),
        [
            Change::Control(Control::BitrateKbps(1500)),
            Change::Control(Control::Streaming(false)),
        ]
    );
    c.on_applied(now, asked[0].0, Ok(()));
    assert!(
        drain(&mut c).is_empty(),
        "one report per payload, once all are answered"
    );
    c.on_applied(now, asked[1].0, Ok(()));
    let pubs = publishes(&drain(&mut c));
    assert_eq!(
        pubs,
        [(
            "node/node1/params/local".to_owned(),
            json!({"Camera": {"Stream": false, "Bitrate": 1500}})
        )]
    );
    assert!(!c.state().streaming);
    assert_eq!(c.state().bitrate_kbps, 1500);

    let (asked, pubs) = write_ok(&mut c, now, r#"{"Camera":{"Resolution":"320x240"}}"#);
    assert_eq!(
        asked,
        [Change::Control(Control::Resolution {
            width: 320,
            height: 240
        })]
    );
    assert_eq!(pubs[0].1, json!({"Camera": {"Resolution": "320x240"}}));
    let (asked, pubs) = write_ok(&mut c, now, r#"{"Camera":{"Audio":false,"Max Viewers":3}}"#);
    assert_eq!(
        asked,
        [
            Change::Control(Control::Audio(false)),
            Change::Control(Control::MaxViewers(3))
        ]
    );
    assert_eq!(
        pubs[0].1,
        json!({"Camera": {"Audio": false, "Max Viewers": 3}})
    );
    let (asked, pubs) = write_ok(&mut c, now, r#"{"Camera":{"Name":"Porch"}}"#);
    assert_eq!(asked, [Change::Name("Porch".into())]);
    assert_eq!(pubs[0].1, json!({"Camera": {"Name": "Porch"}}));
    assert_eq!(c.state().name, "Porch");

    // The same value again: nothing to apply, nothing reported.
    let (asked, pubs) = write_ok(&mut c, now, r#"{"Camera":{"Stream":false,"Audio":false}}"#);
    assert!(asked.is_empty() && pubs.is_empty());
    // Init after a reconnect carries every confirmed value.
    c.on_disconnected();
    c.on_connected(now);
    let pubs = publishes(&drain(&mut c));
    assert_eq!(
        pubs[1].1,
        json!({"Camera": {"Name": "Porch", "Channel": "esp-v1-node1", "Stream": false,
            "Resolution": "320x240", "Bitrate": 1500, "Audio": false, "Max Viewers": 3,
            "Viewers": 0}})
    );
}

#[test]
fn bad_writes_are_rejected_with_an_alert_and_the_value_stays() {
    let now = t0();
    let mut c = connected(now);
    let before = c.state().clone();
    for (payload, expect) in [
        (
            r#"{"Camera":{"Channel":"other"}}"#,
            "Camera.Channel: read-only",
        ),
        (r#"{"Camera":{"Viewers":3}}"#, "Camera.Viewers: read-only"),
        (r#"{"Camera":{"Bitrate":50}}"#, "out of bounds"),
        (r#"{"Camera":{"Bitrate":4050}}"#, "out of bounds"),
        (r#"{"Camera":{"Bitrate":1234}}"#, "step 50"),
        (r#"{"Camera":{"Bitrate":1000.5}}"#, "an integer"),
        (r#"{"Camera":{"Bitrate":"1000"}}"#, "an integer"),
        (r#"{"Camera":{"Max Viewers":0}}"#, "out of bounds"),
        (r#"{"Camera":{"Max Viewers":11}}"#, "out of bounds"),
        (
            r#"{"Camera":{"Resolution":"1920x1080"}}"#,
            "not one of 320x240, 640x480, 1280x720",
        ),
        (r#"{"Camera":{"Resolution":"640X480"}}"#, "not one of"),
        (r#"{"Camera":{"Resolution":5}}"#, "a string"),
        (r#"{"Camera":{"Stream":1}}"#, "a bool"),
        (r#"{"Camera":{"Audio":"on"}}"#, "a bool"),
        (r#"{"Camera":{"Name":""}}"#, "1-64 bytes"),
        (r#"{"Camera":{"Name":null}}"#, "a string"),
    ] {
        c.handle_remote(now, payload.as_bytes());
        let outs = drain(&mut c);
        assert!(applies(&outs).is_empty(), "{payload}");
        let a = alerts(&outs);
        assert_eq!(a.len(), 1, "{payload}: {outs:?}");
        assert!(a[0].contains(expect), "{payload}: {}", a[0]);
        assert_eq!(publishes(&outs).len(), 1, "only the alert: {payload}");
    }
    let long = format!(r#"{{"Camera":{{"Name":"{}"}}}}"#, "n".repeat(65));
    c.handle_remote(now, long.as_bytes());
    assert_eq!(alerts(&drain(&mut c)).len(), 1);
    assert_eq!(c.state(), &before);
    assert_eq!(c.stats().rejected, 17);

    // A bad entry does not spoil a good one beside it.
    let (asked, pubs) = write_ok(&mut c, now, r#"{"Camera":{"Bitrate":99999,"Audio":false}}"#);
    assert_eq!(asked, [Change::Control(Control::Audio(false))]);
    assert_eq!(pubs.len(), 2);
    assert_eq!(pubs[0].0, "node/node1/alert");
    assert_eq!(pubs[1].1, json!({"Camera": {"Audio": false}}));
}

#[test]
fn unknown_names_malformed_and_oversized_payloads_are_ignored() {
    let now = t0();
    let mut c = connected(now);
    for payload in [
        &b"not json"[..],
        b"",
        b"{\"Camera\":",
        b"[1,2,3]",
        b"\"Camera\"",
        b"{\"Camera\":[]}",
        b"{\"Doorbell\":{\"Stream\":false}}",
        b"{\"Camera\":{\"Zoom\":2}}",
        b"\xff\xfe",
    ] {
        c.handle_remote(now, payload);
        assert!(
            drain(&mut c).is_empty(),
            "{:?}",
            String::from_utf8_lossy(payload)
        );
    }
    assert_eq!(c.stats().ignored, 9);
    let mut big = br#"{"Camera":{"Name":""#.to_vec();
    big.extend(std::iter::repeat_n(b'a', MAX_REMOTE_PAYLOAD));
    big.extend(br#""}}"#);
    c.handle_remote(now, &big);
    assert!(drain(&mut c).is_empty());
    assert_eq!(c.stats().ignored, 10);
    // Deep nesting is refused by the parser, not a stack overflow.
    let deep = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
    c.handle_remote(now, deep.as_bytes());
    assert_eq!(c.stats().ignored, 11);
    // Still working.
    let (asked, _) = write_ok(&mut c, now, r#"{"Camera":{"Stream":false}}"#);
    assert_eq!(asked, [Change::Control(Control::Streaming(false))]);
}

#[test]
fn failed_applies_alert_and_keep_the_value() {
    let now = t0();
    let mut c = connected(now);
    c.handle_remote(
        now,
        br#"{"Camera":{"Resolution":"1280x720","Audio":false}}"#,
    );
    let asked = applies(&drain(&mut c));
    let res_id = asked
        .iter()
        .find(|(_, ch)| matches!(ch, Change::Control(Control::Resolution { .. })))
        .unwrap()
        .0;
    let audio_id = asked.iter().find(|(id, _)| *id != res_id).unwrap().0;
    c.on_applied(
        now,
        res_id,
        Err(ControlError::Unsupported("file source".into())),
    );
    c.on_applied(now, audio_id, Ok(()));
    let outs = drain(&mut c);
    let a = alerts(&outs);
    assert_eq!(a.len(), 1);
    assert!(a[0].contains("Camera.Resolution: not applied") && a[0].contains("file source"));
    let pubs = publishes(&outs);
    assert_eq!(pubs.last().unwrap().1, json!({"Camera": {"Audio": false}}));
    assert_eq!(c.state().resolution, Resolution::new(640, 480));
    assert_eq!(c.stats().failed, 1);
    // Unknown ids are ignored.
    c.on_applied(now, 999, Ok(()));
    assert!(drain(&mut c).is_empty());
}

#[test]
fn writes_compare_against_what_is_in_flight_and_applies_are_bounded() {
    let now = t0();
    let mut c = connected(now);
    c.handle_remote(now, br#"{"Camera":{"Stream":false}}"#);
    let first = applies(&drain(&mut c));
    // Back to true while false is still in flight: asked again, not skipped.
    c.handle_remote(now, br#"{"Camera":{"Stream":true}}"#);
    let second = applies(&drain(&mut c));
    assert_eq!(second[0].1, Change::Control(Control::Streaming(true)));
    c.on_applied(now, first[0].0, Ok(()));
    assert_eq!(
        publishes(&drain(&mut c))[0].1,
        json!({"Camera": {"Stream": false}})
    );
    c.on_applied(now, second[0].0, Ok(()));
    assert_eq!(
        publishes(&drain(&mut c))[0].1,
        json!({"Camera": {"Stream": true}})
    );

    // A flood of writes the application never answers: at most MAX_PENDING_APPLIES in flight.
    let mut asked = 0;
    let mut rejected = 0;
    for i in 0..100 {
        let kbps = 100 + 50 * (i % 70);
        c.handle_remote(
            now,
            format!(r#"{{"Camera":{{"Bitrate":{kbps}}}}}"#).as_bytes(),
        );
        let outs = drain(&mut c);
        asked += applies(&outs).len();
        rejected += alerts(&outs).len();
    }
    assert_eq!(asked, MAX_PENDING_APPLIES);
    assert!(rejected > 0);
}

#[test]
fn nothing_is_published_while_disconnected() {
    let now = t0();
    let mut c = connected(now);
    c.on_disconnected();
    c.set_viewers(now, 2);
    c.handle_remote(now, br#"{"Camera":{"Channel":"x"}}"#);
    let outs = drain(&mut c);
    assert!(publishes(&outs).is_empty());
    c.handle_remote(now, br#"{"Camera":{"Audio":false}}"#);
    let asked = applies(&drain(&mut c));
    c.on_applied(now, asked[0].0, Ok(()));
    assert!(drain(&mut c).is_empty());
    c.on_connected(now);
    let pubs = publishes(&drain(&mut c));
    assert_eq!(pubs[1].1["Camera"]["Audio"], false);
    assert_eq!(pubs[1].1["Camera"]["Viewers"], 2);
}

#[test]
fn viewers_are_reported_at_most_once_a_second_latest_value_wins() {
    let start = t0();
    let mut c = connected(start);
    let viewers = |c: &mut NodeCore| -> Vec<Value> {
        publishes(&drain(c))
            .into_iter()
            .map(|(t, v)| {
                assert_eq!(t, "node/node1/params/local");
                v["Camera"]["Viewers"].clone()
            })
            .collect()
    };
    // Init at `start` counts as a report: a change 200 ms later waits until start + 1 s.
    c.set_viewers(ms(start, 200), 1);
    assert!(viewers(&mut c).is_empty());
    assert_eq!(c.poll_timeout(), Some(ms(start, 1000)));
    c.set_viewers(ms(start, 300), 2);
    c.set_viewers(ms(start, 400), 3);
    c.handle_timeout(ms(start, 999));
    assert!(viewers(&mut c).is_empty());
    c.handle_timeout(ms(start, 1000));
    assert_eq!(viewers(&mut c), [json!(3)]);
    assert_eq!(c.poll_timeout(), None);
    // Two seconds of quiet: the next change goes out at once.
    c.set_viewers(ms(start, 3000), 4);
    assert_eq!(viewers(&mut c), [json!(4)]);
    // Up and back down within the interval: nothing to report at the timeout.
    c.set_viewers(ms(start, 3100), 5);
    c.set_viewers(ms(start, 3200), 4);
    assert_eq!(c.poll_timeout(), None);
    c.handle_timeout(ms(start, 4000));
    assert!(viewers(&mut c).is_empty());
    // 100 changes in one second: at most two reports (one at once, one at the deadline).
    let mut reports = 0;
    for i in 0..100u64 {
        let now = ms(start, 5000 + i * 10);
        if c.poll_timeout().is_some_and(|t| t <= now) {
            c.handle_timeout(now);
        }
        c.set_viewers(now, (i % 7) as usize);
        reports += viewers(&mut c).len();
    }
    c.handle_timeout(ms(start, 7000));
    let last = viewers(&mut c);
    reports += last.len();
    assert!(reports <= 3, "{reports}");
    assert_eq!(c.state().viewers, 99 % 7);
    assert_eq!(last, [json!(99 % 7)]);
}

#[test]
fn resolution_parsing() {
    assert_eq!(
        Resolution::parse("640x480"),
        Some(Resolution::new(640, 480))
    );
    for bad in [
        "",
        "x",
        "640x",
        "x480",
        "640x480x1",
        "-1x2",
        "999999x1",
        " 640x480",
    ] {
        assert_eq!(Resolution::parse(bad), None, "{bad:?}");
    }
    assert_eq!(Resolution::new(1280, 720).to_string(), "1280x720");
}
