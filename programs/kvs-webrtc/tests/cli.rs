//! The program as a user runs it: bad input gets a clear error and a non-zero exit, never a
//! panic; garbage on stdin is reported and the program keeps serving until stopped.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn program() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kvs-webrtc"));
    cmd.env("RUST_LOG", "warn").env_remove("KVS_WEBRTC_CONFIG");
    cmd
}

/// Run to completion (bounded), returning (exit success, stdout + stderr).
fn run(cmd: &mut Command) -> (bool, String) {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            child.kill().ok();
            panic!("program did not exit on bad input");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert!(!out.contains("panicked"), "the program panicked:\n{out}");
    (status.success(), out)
}

/// Arguments, environment overrides, and what the error must mention.
type BadInputCase = (Vec<String>, Vec<(&'static str, &'static str)>, &'static str);

#[test]
fn bad_files_and_values_are_clear_errors() {
    let dir = std::env::temp_dir().join(format!("kvs-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let garbage = dir.join("garbage.h264");
    std::fs::write(&garbage, [0u8, 0, 1, 0x67, 0xff, 0xff]).unwrap();
    let bad_toml = dir.join("device.toml");
    std::fs::write(&bad_toml, "[session]\nmax_viewers = \"many\"\n").unwrap();

    let cases: Vec<BadInputCase> = vec![
        (
            vec![
                "--h264-file".into(),
                dir.join("missing.h264").display().to_string(),
            ],
            vec![],
            "missing.h264",
        ),
        (
            vec!["--h264-file".into(), garbage.display().to_string()],
            vec![],
            "garbage.h264",
        ),
        (
            vec!["--ogg-file".into(), garbage.display().to_string()],
            vec![],
            "audio file",
        ),
        (
            vec!["--vp8-file".into(), garbage.display().to_string()],
            vec![],
            "not an IVF file",
        ),
        (
            vec!["--h265-file".into(), garbage.display().to_string()],
            vec![],
            "no H.265 VPS/SPS/PPS",
        ),
        (
            vec!["--max-viewers".into(), "0".into()],
            vec![],
            "max_viewers",
        ),
        (
            vec!["--config".into(), bad_toml.display().to_string()],
            vec![],
            "max_viewers",
        ),
        (
            vec![],
            vec![("KVS_WEBRTC_SESSION__NO_SUCH_KEY", "1")],
            "no_such_key",
        ),
        (
            vec!["--channel".into(), "bad channel!".into()],
            vec![],
            "signaling.channel",
        ),
        (
            vec!["--region".into(), "Mars-1".into()],
            vec![],
            "signaling.region",
        ),
        (
            vec![
                "--endpoint".into(),
                "https://127.0.0.1:1".into(),
                "--ca-file".into(),
                dir.join("no-such-ca.pem").display().to_string(),
            ],
            vec![],
            "no-such-ca.pem",
        ),
        (
            vec!["--endpoint".into(), "ftp://127.0.0.1:1".into()],
            vec![],
            "control-plane endpoint",
        ),
    ];
    for (args, envs, expected) in cases {
        let mut cmd = program();
        cmd.args(["--listen", "127.0.0.1:0", "--media-bind", "127.0.0.1"])
            .args(&args)
            .envs(envs);
        let (ok, out) = run(&mut cmd);
        assert!(!ok, "{args:?} should fail:\n{out}");
        assert!(
            out.contains(expected),
            "{args:?}: output should mention {expected:?}:\n{out}"
        );
    }
    // A malformed address is refused by the command line parser itself.
    let (ok, out) = run(program().args(["--listen", "not-an-address"]));
    assert!(!ok && out.contains("not-an-address"), "{out}");
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn the_service_refuses_unauthenticated_network_listening_and_zero_timeouts() {
    let dir = std::env::temp_dir().join(format!("kvs-cli-service-{}", std::process::id()));
    let state = dir.display().to_string();
    let (ok, out) = run(program().args([
        "service",
        "--no-auth",
        "--plain",
        "--listen",
        "0.0.0.0:0",
        "--state-dir",
        &state,
    ]));
    assert!(!ok && out.contains("--no-auth"), "{out}");
    for flag in [
        "--idle-timeout",
        "--max-connection-age",
        "--request-timeout",
    ] {
        let (ok, out) = run(program().args([
            "service",
            "--no-auth",
            "--listen",
            "127.0.0.1:0",
            "--state-dir",
            &state,
            flag,
            "0",
        ]));
        assert!(!ok && out.contains(flag), "{flag}: {out}");
    }
    std::fs::remove_dir_all(dir).ok();
}

/// Wait for a line containing `needle` on the child's stdout.
fn wait_for_line(
    lines: &mut impl Iterator<Item = std::io::Result<String>>,
    needle: &str,
) -> String {
    for line in lines {
        let line = line.unwrap();
        if line.contains(needle) {
            return line;
        }
    }
    panic!("program ended before printing {needle:?}");
}

#[test]
fn garbage_on_stdin_is_reported_and_the_program_stops_cleanly() {
    let mut child: Child = program()
        .args([
            "--listen",
            "127.0.0.1:0",
            "--media-bind",
            "127.0.0.1",
            "--h264-stdin",
            "--no-audio",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    wait_for_line(&mut stdout, "Viewer page: http://127.0.0.1:");
    {
        let mut stdin = child.stdin.take().unwrap();
        // Not H.264 at all, then end of stream.
        stdin.write_all(&[0x5a; 64 * 1024]).unwrap();
    }
    wait_for_line(&mut stdout, "video source ended");
    // Still serving: stop it like Ctrl-C / a service manager would.
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "program did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "clean exit after SIGTERM: {status:?}");
}
