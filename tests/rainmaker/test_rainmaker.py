"""The device as a RainMaker node, against real parts started here and removed afterwards.

- Debian's mosquitto as the broker, configured the way AWS IoT behaves for RainMaker nodes:
  mutual TLS (`require_certificate true`), the certificate's CN as the user name
  (`use_identity_as_username true`) and `pattern readwrite node/%u/#`.
- Certificates (a CA, the broker's, the node's, another node's, the cloud's) made at test time
  with the openssl CLI.
- The node: `crates/kvs-app/examples/rainmaker_node.rs` (the real driver and core, with a
  stand-in `DeviceControl` that prints `APPLIED <change>`; the device program wires in the real
  device's).
- The "cloud": paho-mqtt (PyPI), an independent MQTT client, reading the node config and the
  reports and writing params.

Run: `python3 -m unittest discover -s tests/rainmaker -v` (scripts/test.sh does it in a venv
with tests/rainmaker/requirements.txt). `RAINMAKER_NODE_BIN` names a prebuilt example binary;
otherwise the test builds it with cargo.
"""

import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import unittest
from pathlib import Path

import paho.mqtt.client as mqtt

ROOT = Path(__file__).resolve().parents[2]
NODE_ID = "rmtestnode01"
OTHER_ID = "othernode02"
CLOUD = "cloud"
PREFIX = f"node/{NODE_ID}/"


def run(*args, **kw):
    return subprocess.run(args, check=True, capture_output=True, **kw)


def make_certs(d: Path):
    """CA, broker (127.0.0.1), and client certificates whose CN is the MQTT user name."""
    run("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
        "-nodes", "-keyout", str(d / "ca.key"), "-out", str(d / "ca.pem"), "-days", "2",
        "-subj", "/CN=rainmaker-test-ca",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign")

    def issue(name, cn, ext):
        run("openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", str(d / f"{name}.key"), "-out", str(d / f"{name}.csr"), "-subj", f"/CN={cn}")
        (d / f"{name}.ext").write_text(ext)
        run("openssl", "x509", "-req", "-in", str(d / f"{name}.csr"), "-CA", str(d / "ca.pem"),
            "-CAkey", str(d / "ca.key"), "-CAcreateserial", "-out", str(d / f"{name}.pem"),
            "-days", "2", "-extfile", str(d / f"{name}.ext"))

    issue("broker", "localhost",
          "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n"
          "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n")
    client_ext = ("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
                  "extendedKeyUsage=clientAuth\n")
    for name in (NODE_ID, OTHER_ID, CLOUD):
        issue(name, name, client_ext)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listens on {port}")


def node_binary():
    given = os.environ.get("RAINMAKER_NODE_BIN")
    if given:
        return given
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    subprocess.run(["cargo", "build", "-q", "-p", "kvs-app", "--no-default-features",
                    "--features", "rainmaker", "--example", "rainmaker_node"],
                   cwd=ROOT, check=True)
    return str(target / "debug" / "examples" / "rainmaker_node")


class Cloud:
    """An MQTT client with a certificate, collecting every message it receives."""

    def __init__(self, d: Path, port: int, name: str, subscribe: str, persistent=False):
        self.messages = queue.Queue()
        self.connected = threading.Event()
        self.subscribe = subscribe
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=name,
                                  clean_session=not persistent, protocol=mqtt.MQTTv311)
        self.client.tls_set(ca_certs=str(d / "ca.pem"), certfile=str(d / f"{name}.pem"),
                            keyfile=str(d / f"{name}.key"))
        self.client.reconnect_delay_set(min_delay=1, max_delay=1)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = lambda *a: self.connected.clear()
        self.client.on_message = lambda c, u, m: self.messages.put((m.topic, m.payload))
        self.client.connect("127.0.0.1", port, keepalive=10)
        self.client.loop_start()
        assert self.connected.wait(10), f"{name} could not connect"

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        if reason_code == 0:
            client.subscribe(self.subscribe, qos=1)
            self.connected.set()

    def publish(self, topic, payload):
        info = self.client.publish(topic, payload, qos=1)
        info.wait_for_publish(5)

    def drain(self):
        out = []
        while True:
            try:
                out.append(self.messages.get_nowait())
            except queue.Empty:
                return out

    def wait(self, topic, timeout=5.0, pred=lambda payload: True):
        """The first message on `topic` matching `pred`; messages before it are returned too."""
        deadline = time.monotonic() + timeout
        seen = []
        while time.monotonic() < deadline:
            try:
                t, p = self.messages.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            seen.append((t, p))
            if t == topic and pred(p):
                return p, seen
        raise AssertionError(f"no message on {topic} within {timeout}s; saw {seen}")

    def quiet(self, seconds):
        """Everything received in the next `seconds` (except the cloud's own writes)."""
        time.sleep(seconds)
        return [(t, p) for t, p in self.drain() if not t.endswith("/params/remote")]

    def close(self):
        self.client.loop_stop()
        self.client.disconnect()


class RainmakerNodeTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        if shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists():
            raise unittest.SkipTest("mosquitto is not installed (apt-get install mosquitto)")
        cls.bin = node_binary()
        cls.dir = Path(tempfile.mkdtemp(prefix="rainmaker-test-"))
        make_certs(cls.dir)
        cls.port = free_port()
        d = cls.dir
        (d / "acl").write_text(
            f"user {CLOUD}\ntopic readwrite node/#\n\npattern readwrite node/%u/#\n")
        conf = [
            "per_listener_settings false",
            "persistence true",
            f"persistence_location {d}/",
            f"listener {cls.port} 127.0.0.1",
            f"cafile {d}/ca.pem",
            f"certfile {d}/broker.pem",
            f"keyfile {d}/broker.key",
            "require_certificate true",
            "use_identity_as_username true",
            f"acl_file {d}/acl",
            f"log_dest file {d}/mosquitto.log",
            "log_type error", "log_type warning", "log_type notice", "log_type information",
        ]
        if os.geteuid() == 0:
            conf.append("user root")  # otherwise mosquitto drops to `mosquitto` and cannot read d
        (d / "mosquitto.conf").write_text("\n".join(conf) + "\n")
        cls.start_broker()
        # The cloud keeps its session (QoS 1) across the broker restart, so nothing the node
        # publishes while the cloud reconnects is lost.
        cls.cloud = Cloud(d, cls.port, CLOUD, "node/#", persistent=True)
        (d / "node.toml").write_text(
            "[video]\nsource = \"test-pattern\"\nwidth = 640\nheight = 480\nbitrate_bps = 1000000\n"
            "[rainmaker]\n"
            f"broker = \"mqtts://127.0.0.1:{cls.port}\"\nnode_id = \"{NODE_ID}\"\n"
            f"cert_file = \"{d}/{NODE_ID}.pem\"\nkey_file = \"{d}/{NODE_ID}.key\"\n"
            f"ca_file = \"{d}/ca.pem\"\nkeep_alive = 5\n"
            "reconnect = { initial = 1, max = 2, attempt_timeout = 5 }\n")
        cls.node_log = open(d / "node.log", "wb")
        cls.applied = queue.Queue()
        cls.start_node()

    @classmethod
    def start_node(cls):
        cls.node_lines = queue.Queue()
        cls.nodes = getattr(cls, "nodes", [])
        cls.node = subprocess.Popen([cls.bin, str(cls.dir / "node.toml")], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, stderr=cls.node_log,
                                    env={**os.environ, "RUST_LOG": "info,kvs_app=debug"})
        cls.nodes.append(cls.node)
        threading.Thread(target=cls._read_node, args=(cls.node, cls.node_lines),
                         daemon=True).start()

    @classmethod
    def _read_node(cls, node, lines):
        for line in node.stdout:
            line = line.decode().strip()
            lines.put(line)
            if line.startswith("APPLIED "):
                cls.applied.put(line[len("APPLIED "):])

    @classmethod
    def start_broker(cls):
        cls.broker = subprocess.Popen(["mosquitto", "-c", str(cls.dir / "mosquitto.conf")],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(cls.port)

    @classmethod
    def stop_broker(cls):
        cls.broker.terminate()
        cls.broker.wait(10)

    @classmethod
    def tearDownClass(cls):
        for proc in getattr(cls, "nodes", []):
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            proc.stdin.close()
            proc.stdout.close()
        if getattr(cls, "cloud", None):
            cls.cloud.close()
        if getattr(cls, "broker", None) and cls.broker.poll() is None:
            cls.stop_broker()
        if getattr(cls, "node_log", None):
            cls.node_log.close()
        if os.environ.get("RAINMAKER_KEEP"):
            print(f"# kept {cls.dir}")
        else:
            shutil.rmtree(cls.dir, ignore_errors=True)

    def applied_now(self):
        out = []
        while True:
            try:
                out.append(self.applied.get_nowait())
            except queue.Empty:
                return out

    def write(self, payload):
        self.cloud.publish(PREFIX + "params/remote", payload)

    def expect_report(self, expected, timeout=5.0):
        p, _ = self.cloud.wait(PREFIX + "params/local", timeout)
        self.assertEqual(json.loads(p), expected)

    def expect_alert(self, contains):
        p, _ = self.cloud.wait(PREFIX + "alert")
        text = json.loads(p)["esp.alert.str"]
        self.assertIn(contains, text)
        return text

    def test_01_node_config_and_init_state(self):
        config, _ = self.cloud.wait(PREFIX + "config", timeout=30)
        config = json.loads(config)
        self.assertEqual(config["node_id"], NODE_ID)
        self.assertIsInstance(config["config_version"], str)
        info = config["info"]
        self.assertEqual(info["name"], "WebRTC Camera")
        self.assertEqual(info["type"], "Camera")
        for key in ("fw_version", "model", "project_name", "platform"):
            self.assertTrue(isinstance(info[key], str) and info[key], key)
        self.assertEqual(config["services"], [])
        self.assertEqual(len(config["devices"]), 1)
        dev = config["devices"][0]
        self.assertEqual((dev["name"], dev["type"]), ("Camera", "esp.device.camera"))
        params = {p["name"]: p for p in dev["params"]}
        self.assertEqual(set(params), {"Name", "Channel", "Stream", "Resolution", "Bitrate",
                                       "Audio", "Max Viewers", "Viewers"})
        for p in dev["params"]:
            self.assertIn(p["data_type"], ("bool", "int", "float", "string", "object", "array"))
            self.assertTrue(set(p["properties"]) <= {"read", "write", "time_series"})
            self.assertIn("read", p["properties"])
            self.assertTrue(p["type"].startswith("esp.param."))
        expect = {
            "Name": ("esp.param.name", "string", ["read", "write"]),
            "Channel": ("esp.param.channel", "string", ["read"]),
            "Stream": ("esp.param.power", "bool", ["read", "write"]),
            "Resolution": ("esp.param.resolution", "string", ["read", "write"]),
            "Bitrate": ("esp.param.bitrate", "int", ["read", "write"]),
            "Audio": ("esp.param.audio", "bool", ["read", "write"]),
            "Max Viewers": ("esp.param.max-viewers", "int", ["read", "write"]),
            "Viewers": ("esp.param.viewers", "int", ["read"]),
        }
        for name, (ptype, dtype, props) in expect.items():
            p = params[name]
            self.assertEqual((p["type"], p["data_type"], p["properties"]), (ptype, dtype, props),
                             name)
        self.assertEqual(params["Resolution"]["valid_strs"], ["320x240", "640x480", "1280x720"])
        self.assertEqual(params["Bitrate"]["bounds"], {"min": 100, "max": 4000, "step": 50})
        self.assertEqual(params["Max Viewers"]["bounds"], {"min": 1, "max": 10, "step": 1})

        init, _ = self.cloud.wait(PREFIX + "params/local/init")
        self.assertEqual(json.loads(init), {"Camera": {
            "Name": "Camera", "Channel": f"esp-v1-{NODE_ID}", "Stream": True,
            "Resolution": "640x480", "Bitrate": 1000, "Audio": True, "Max Viewers": 10,
            "Viewers": 0}})
        connected, _ = self.cloud.wait(PREFIX + "params/local")
        self.assertEqual(json.loads(connected), {"Connectivity": {"Connected": True}})

    def test_02_valid_writes_report_only_what_changed(self):
        self.cloud.drain()
        self.write('{"Camera":{"Bitrate":1500}}')
        self.expect_report({"Camera": {"Bitrate": 1500}})
        self.write('{"Camera":{"Stream":false,"Resolution":"320x240"}}')
        self.expect_report({"Camera": {"Stream": False, "Resolution": "320x240"}})
        self.write('{"Camera":{"Max Viewers":3,"Audio":false,"Name":"Porch"}}')
        self.expect_report({"Camera": {"Max Viewers": 3, "Audio": False, "Name": "Porch"}})
        # Equal to the current value: nothing applied, nothing reported.
        self.write('{"Camera":{"Bitrate":1500}}')
        self.assertEqual(self.cloud.quiet(1.0), [])
        applied = self.applied_now()
        self.assertEqual(sorted(applied), sorted([
            "BitrateKbps(1500)", "Streaming(false)", "Resolution { width: 320, height: 240 }",
            "MaxViewers(3)", "Audio(false)"]))

    def test_03_read_only_param_is_rejected_with_an_alert(self):
        self.cloud.drain()
        self.write('{"Camera":{"Channel":"someone-elses"}}')
        self.expect_alert("Camera.Channel: read-only")
        self.write('{"Camera":{"Viewers":7}}')
        self.expect_alert("Camera.Viewers: read-only")
        self.assertEqual([t for t, _ in self.cloud.quiet(1.0) if t.endswith("params/local")], [])
        self.assertEqual(self.applied_now(), [])

    def test_04_out_of_bounds_and_invalid_strings_are_rejected_not_clamped(self):
        self.cloud.drain()
        for payload, why in [
            ('{"Camera":{"Bitrate":99999}}', "out of bounds"),
            ('{"Camera":{"Bitrate":1234}}', "step 50"),
            ('{"Camera":{"Max Viewers":0}}', "out of bounds"),
            ('{"Camera":{"Max Viewers":11}}', "out of bounds"),
            ('{"Camera":{"Resolution":"1920x1080"}}', "not one of"),
            ('{"Camera":{"Stream":"yes"}}', "a bool"),
        ]:
            self.write(payload)
            self.expect_alert(why)
        self.assertEqual([t for t, _ in self.cloud.quiet(1.0) if t.endswith("params/local")], [])
        self.assertEqual(self.applied_now(), [])

    def test_05_malformed_and_unknown_input_is_ignored_and_nothing_breaks(self):
        self.cloud.drain()
        for payload in [b"not json", b'{"Camera":', b"[1,2]", b"\xff\xfe\x00",
                        b'{"Doorbell":{"Stream":true}}', b'{"Camera":{"Zoom":2}}',
                        b'{"Camera":{"Name":"' + b"a" * 17000 + b'"}}']:
            self.write(payload)
        self.assertEqual(self.cloud.quiet(1.0), [])
        self.assertEqual(self.applied_now(), [])
        self.write('{"Camera":{"Stream":true}}')
        self.expect_report({"Camera": {"Stream": True}})
        self.assertEqual(self.applied_now(), ["Streaming(true)"])

    def test_06_viewers_reports_are_coalesced(self):
        time.sleep(1.1)  # past any recent report
        self.cloud.drain()
        for n in range(1, 6):
            self.node.stdin.write(f"viewers {n}\n".encode())
            self.node.stdin.flush()
            time.sleep(0.05)
        reports = [json.loads(p) for t, p in self.cloud.quiet(2.0) if t == PREFIX + "params/local"]
        values = [r["Camera"]["Viewers"] for r in reports]
        self.assertLessEqual(len(values), 2, values)
        self.assertEqual(values[-1], 5, values)

    def test_07_another_node_cannot_write_into_this_node(self):
        other = Cloud(self.dir, self.port, OTHER_ID, f"node/{OTHER_ID}/#")
        try:
            self.cloud.drain()
            other.publish(PREFIX + "params/remote", '{"Camera":{"Max Viewers":1}}')
            other.publish(PREFIX + "params/local", '{"Camera":{"Stream":false}}')
            # Its own topics work (so the denial above is the ACL, not a broken connection).
            other.publish(f"node/{OTHER_ID}/params/local", '{"x":1}')
            t, _ = other.messages.get(timeout=5)
            self.assertEqual(t, f"node/{OTHER_ID}/params/local")
            seen = self.cloud.quiet(1.5)
            self.assertEqual([(t, p) for t, p in seen if t.startswith(PREFIX)], [])
            self.assertEqual(self.applied_now(), [])
        finally:
            other.close()
        log = (self.dir / "mosquitto.log").read_text(errors="replace")
        self.assertIn(OTHER_ID, log)

    def test_08_broker_restart_node_reconnects_and_republishes(self):
        self.cloud.drain()
        self.stop_broker()
        time.sleep(1.0)
        self.start_broker()
        config, _ = self.cloud.wait(PREFIX + "config", timeout=30)
        self.assertEqual(json.loads(config)["node_id"], NODE_ID)
        init, _ = self.cloud.wait(PREFIX + "params/local/init", timeout=10)
        state = json.loads(init)["Camera"]
        # The state written before the restart, not the start-up values.
        self.assertEqual((state["Bitrate"], state["Resolution"], state["Max Viewers"],
                          state["Stream"], state["Name"], state["Viewers"]),
                         (1500, "320x240", 3, True, "Porch", 5))
        connected, _ = self.cloud.wait(PREFIX + "params/local")
        self.assertEqual(json.loads(connected), {"Connectivity": {"Connected": True}})
        self.assertIsNone(self.node.poll())
        # The device was not touched by the broker going away.
        self.assertEqual(self.applied_now(), [])
        # And writes work again.
        self.write('{"Camera":{"Audio":true}}')
        self.expect_report({"Camera": {"Audio": True}}, timeout=10)

    def test_09_sigkill_the_node_and_the_cloud_sees_the_last_will(self):
        self.cloud.drain()
        self.node.send_signal(signal.SIGKILL)
        self.node.wait(5)
        will, _ = self.cloud.wait(PREFIX + "params/local", timeout=10)
        self.assertEqual(json.loads(will), {"Connectivity": {"Connected": False}})

    def test_10_clean_stop_says_disconnected_itself(self):
        self.cloud.drain()
        self.start_node()
        self.cloud.wait(PREFIX + "config", timeout=30)
        self.cloud.wait(PREFIX + "params/local",
                        pred=lambda p: json.loads(p) == {"Connectivity": {"Connected": True}})
        self.node.send_signal(signal.SIGTERM)
        p, _ = self.cloud.wait(PREFIX + "params/local", timeout=5)
        self.assertEqual(json.loads(p), {"Connectivity": {"Connected": False}})
        self.assertEqual(self.node.wait(5), 0)
        lines = []
        while not self.node_lines.empty():
            lines.append(self.node_lines.get())
        self.assertIn("STOPPED", lines)
        # Exactly one: the node's own, not also the broker's will after a clean DISCONNECT.
        self.assertEqual([t for t, _ in self.cloud.quiet(1.0) if t.endswith("params/local")], [])


if __name__ == "__main__":
    unittest.main()
