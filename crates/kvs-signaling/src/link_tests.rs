//! The link core in virtual time: pings, renewal, draining and the renewal races, with exact
//! instants and no sockets.

use super::*;
use crate::codec::{MessageKind, ServiceFrame};

const MIN: u64 = 60;

struct Sim {
    core: LinkCore,
    t0: Instant,
    now: Instant,
    log: Vec<(Duration, LinkOutput)>,
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

impl Sim {
    fn new(renew_after: Option<Duration>) -> Self {
        let t0 = Instant::now();
        let policy = LinkPolicy {
            renew_after,
            ..LinkPolicy::default()
        };
        Sim {
            core: LinkCore::new(Role::Master, policy, t0),
            t0,
            now: t0,
            log: Vec::new(),
        }
    }

    fn collect(&mut self) {
        let at = self.now - self.t0;
        while let Some(o) = self.core.poll_output() {
            self.log.push((at, o));
        }
    }

    fn run_until(&mut self, t: Duration) {
        let end = self.t0 + t;
        while let Some(due) = self.core.poll_timeout().filter(|d| *d <= end) {
            self.now = due.max(self.now);
            self.core.handle_timeout(self.now);
            self.collect();
        }
        self.now = end;
    }

    fn input(&mut self, input: LinkInput<'_>) {
        self.core.handle_input(self.now, input);
        self.collect();
    }

    fn take(&mut self) -> Vec<(Duration, LinkOutput)> {
        std::mem::take(&mut self.log)
    }
}

fn pings(log: &[(Duration, LinkOutput)]) -> Vec<(Duration, ConnId)> {
    log.iter()
        .filter_map(|(t, o)| match o {
            LinkOutput::Ping { conn } => Some((*t, *conn)),
            _ => None,
        })
        .collect()
}

fn events(log: &[(Duration, LinkOutput)]) -> Vec<SignalingEvent> {
    log.iter()
        .filter_map(|(_, o)| match o {
            LinkOutput::Event(e) => Some(e.clone()),
            _ => None,
        })
        .collect()
}

fn go_away_frame() -> String {
    ServiceFrame::go_away().emit()
}

fn answer(peer: &str) -> LinkInput<'static> {
    LinkInput::Send(SignalingMessage::answer(peer, "v=0"))
}

#[test]
fn pings_every_ten_seconds_on_the_current_connection() {
    let mut sim = Sim::new(None);
    sim.run_until(secs(35));
    assert_eq!(
        pings(&sim.take()),
        [(secs(10), 0), (secs(20), 0), (secs(30), 0)]
    );
    assert_eq!(sim.core.poll_timeout(), Some(sim.t0 + secs(40)));
}

#[test]
fn renews_at_the_age_limit_switches_and_drains_the_old_connection() {
    let mut sim = Sim::new(Some(secs(50 * MIN)));
    sim.run_until(secs(50 * MIN));
    let log = sim.take();
    let open: Vec<_> = log
        .iter()
        .filter(|(_, o)| matches!(o, LinkOutput::OpenRenewal { conn: 1 }))
        .map(|(t, _)| *t)
        .collect();
    assert_eq!(open, [secs(50 * MIN)]);

    // The new connection is up two seconds later.
    sim.run_until(secs(50 * MIN + 2));
    sim.input(LinkInput::RenewalOpened { conn: 1 });
    let log = sim.take();
    assert!(log.contains(&(secs(50 * MIN + 2), LinkOutput::CloseGracefully { conn: 0 })));
    assert!(matches!(
        &events(&log)[..],
        [SignalingEvent::Renewed { reason }] if reason == "connection renewed after 3000 s"
    ));
    assert_eq!(sim.core.current(), 1);

    // What the old connection still delivers within 5 s reaches the application.
    let frame = go_away_frame();
    sim.input(LinkInput::Frame {
        conn: 0,
        bytes: frame.as_bytes(),
    });
    assert!(matches!(
        &events(&sim.take())[..],
        [SignalingEvent::Message(m)] if m.kind == MessageKind::GoAway
    ));
    // Sends go to the new connection.
    sim.input(answer("viewer-1"));
    assert!(matches!(
        &sim.take()[..],
        [(_, LinkOutput::Transmit { conn: 1, .. })]
    ));
    // The old one is dropped 5 s after the switch; later frames on it are ignored.
    sim.run_until(secs(50 * MIN + 10));
    let log = sim.take();
    assert!(log.contains(&(secs(50 * MIN + 7), LinkOutput::Drop { conn: 0 })));
    assert!(
        pings(&log).is_empty(),
        "pings restart 10 s after the switch"
    );
    sim.input(LinkInput::Frame {
        conn: 0,
        bytes: frame.as_bytes(),
    });
    assert!(events(&sim.take()).is_empty());
    sim.run_until(secs(50 * MIN + 12));
    assert_eq!(pings(&sim.take()), [(secs(50 * MIN + 12), 1)]);
    // The next renewal is 50 minutes after the switch.
    sim.run_until(secs(100 * MIN + 2));
    assert!(sim
        .take()
        .contains(&(secs(100 * MIN + 2), LinkOutput::OpenRenewal { conn: 2 })));
}

#[test]
fn a_failed_renewal_is_retried_after_30_s_and_the_old_connection_stays() {
    let mut sim = Sim::new(Some(secs(50 * MIN)));
    sim.run_until(secs(50 * MIN));
    sim.input(LinkInput::RenewalFailed {
        conn: 1,
        reason: "403".into(),
    });
    assert!(events(&sim.take()).is_empty(), "nothing to report yet");
    sim.input(answer("v"));
    assert!(matches!(
        &sim.take()[..],
        [(_, LinkOutput::Transmit { conn: 0, .. })]
    ));
    sim.run_until(secs(50 * MIN + 30));
    assert!(sim
        .take()
        .contains(&(secs(50 * MIN + 30), LinkOutput::OpenRenewal { conn: 2 })));
}

#[test]
fn the_old_connection_closing_before_the_renewal_is_ready_is_no_disconnection() {
    let mut sim = Sim::new(Some(secs(50 * MIN)));
    sim.run_until(secs(50 * MIN));
    sim.take();
    // The service drops the old connection first; a send failed on it too.
    sim.input(LinkInput::Lost {
        conn: 0,
        reason: "closed by service".into(),
    });
    assert!(events(&sim.take()).is_empty());
    sim.input(answer("viewer-1"));
    assert!(sim.take().is_empty(), "held for the new connection");
    // No pings on a dead connection.
    sim.run_until(secs(50 * MIN + 15));
    assert!(pings(&sim.take()).is_empty());
    sim.input(LinkInput::RenewalOpened { conn: 1 });
    let log = sim.take();
    assert!(log.contains(&(secs(50 * MIN + 15), LinkOutput::Drop { conn: 0 })));
    let sent: Vec<_> = log
        .iter()
        .filter_map(|(_, o)| match o {
            LinkOutput::Transmit { conn, text } => Some((*conn, text.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].0, 1);
    assert!(sent[0].1.contains("viewer-1"));
    assert!(matches!(
        &events(&log)[..],
        [SignalingEvent::Renewed { reason }]
            if reason.contains("the old one ended: closed by service")
    ));
}

#[test]
fn a_frame_whose_send_failed_during_renewal_goes_out_on_the_new_connection() {
    let mut sim = Sim::new(Some(secs(50 * MIN)));
    sim.run_until(secs(50 * MIN));
    sim.take();
    sim.input(LinkInput::SendFailed {
        conn: 0,
        text: "{\"frame\":1}".into(),
        reason: "broken pipe".into(),
    });
    sim.input(LinkInput::RenewalOpened { conn: 1 });
    assert!(sim.take().contains(&(
        secs(50 * MIN),
        LinkOutput::Transmit {
            conn: 1,
            text: "{\"frame\":1}".into()
        }
    )));
}

#[test]
fn losing_both_connections_ends_the_link_with_both_reasons() {
    let mut sim = Sim::new(Some(secs(50 * MIN)));
    sim.run_until(secs(50 * MIN));
    sim.input(LinkInput::Lost {
        conn: 0,
        reason: "closed by service".into(),
    });
    sim.input(LinkInput::RenewalFailed {
        conn: 1,
        reason: "HTTP 403".into(),
    });
    let log = sim.take();
    assert!(log
        .iter()
        .any(|(_, o)| *o == LinkOutput::End { normal: false }));
    assert!(matches!(
        &events(&log)[..],
        [SignalingEvent::Disconnected { reason }]
            if reason == "closed by service; renewing failed too: HTTP 403"
    ));
    assert!(sim.core.is_ended());
    assert_eq!(sim.core.poll_timeout(), None);
}

#[test]
fn without_a_renewal_a_lost_connection_ends_the_link_at_once() {
    let mut sim = Sim::new(None);
    sim.input(LinkInput::Lost {
        conn: 0,
        reason: "connection error: reset".into(),
    });
    assert!(matches!(
        &events(&sim.take())[..],
        [SignalingEvent::Disconnected { reason }] if reason == "connection error: reset"
    ));
    // Nothing after the end.
    sim.input(answer("v"));
    assert!(sim.take().is_empty());
}

#[test]
fn bad_frames_and_unsendable_messages_are_skipped_and_the_link_goes_on() {
    let mut sim = Sim::new(None);
    sim.input(LinkInput::Frame {
        conn: 0,
        bytes: b"{not json",
    });
    // A master message without a recipient cannot be sent.
    sim.input(LinkInput::Send(SignalingMessage::answer(None, "v=0")));
    assert!(sim.take().is_empty());
    assert!(!sim.core.is_ended());
    sim.input(LinkInput::AppClosed {
        reason: "closed by client".into(),
    });
    let log = sim.take();
    assert_eq!(log[0].1, LinkOutput::End { normal: true });
}

#[test]
fn messages_held_for_a_renewal_are_bounded() {
    let mut sim = Sim::new(Some(secs(MIN)));
    sim.run_until(secs(MIN));
    sim.input(LinkInput::Lost {
        conn: 0,
        reason: "gone".into(),
    });
    for i in 0..1000 {
        sim.input(LinkInput::Send(SignalingMessage::answer(
            format!("v{i}"),
            "v=0",
        )));
    }
    sim.take();
    sim.input(LinkInput::RenewalOpened { conn: 1 });
    let transmitted = sim
        .take()
        .iter()
        .filter(|(_, o)| matches!(o, LinkOutput::Transmit { .. }))
        .count();
    assert_eq!(transmitted, LinkPolicy::default().max_held);
}
