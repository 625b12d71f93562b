"""boto3 (the AWS SDK for Python) calls every control-plane operation of the local service.

Starts the real `kvs-webrtc service` program with TLS and SigV4, points boto3 at it with an
endpoint override and the service's CA, and checks responses and error codes.
Run: .venv/bin/python -m unittest discover -s tests/conformance -p 'test_*.py'
"""

import base64
import hashlib
import hmac
import os
import re
import signal
import subprocess
import tempfile
import time
import unittest
from pathlib import Path

import boto3
import botocore.config
import botocore.exceptions

REPO = Path(__file__).resolve().parents[2]
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
PROGRAM = Path(os.environ.get("KVS_WEBRTC_BIN", TARGET / "release" / "kvs-webrtc"))
REGION = "us-west-2"
KEY_ID = "AKIDBOTO3CONFORMANCE"
SECRET = "boto3/secret+key/abcdefghijklmnopqrstuvwxyz"
TURN_SECRET = "boto3-turn-secret"


class Service:
    """The real program, started on a free loopback port."""

    def __init__(self, state_dir, extra_args=()):
        env = dict(os.environ, KVS_SERVICE_ACCESS_KEY_ID=KEY_ID, KVS_SERVICE_SECRET_ACCESS_KEY=SECRET)
        args = [str(PROGRAM), "service", "--listen", "127.0.0.1:0", "--state-dir", state_dir,
                "--region", REGION, *extra_args]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     env=env, text=True)
        self.control_plane = self.data_plane = None
        deadline = time.monotonic() + 30
        while self.control_plane is None or self.data_plane is None:
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the service did not print its endpoints in time")
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"the service exited early with {self.proc.wait()}")
            if m := re.match(r"Control plane: (\S+)", line):
                self.control_plane = m.group(1)
            if m := re.match(r"Data plane:\s+(\S+)", line):
                self.data_plane = m.group(1)
        self.ca = os.path.join(state_dir, "ca.pem")

    def client(self, name="kinesisvideo", key_id=KEY_ID, secret=SECRET, token=None, endpoint=None):
        return boto3.client(
            name, region_name=REGION, endpoint_url=endpoint or self.control_plane,
            aws_access_key_id=key_id, aws_secret_access_key=secret, aws_session_token=token,
            verify=self.ca, config=botocore.config.Config(retries={"max_attempts": 1}),
        )

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()


class Boto3Conformance(unittest.TestCase):
    def setUp(self):
        self.assertTrue(PROGRAM.exists(), f"{PROGRAM} missing: cargo build --release -p kvs-webrtc")
        self.tmp = tempfile.TemporaryDirectory()
        self.service = Service(self.tmp.name, ["--turn-uri", "turns:127.0.0.1:5349?transport=tcp",
                                               "--turn-secret", TURN_SECRET])

    def tearDown(self):
        self.service.stop()
        self.tmp.cleanup()

    def error_code(self, call, **kwargs):
        with self.assertRaises(botocore.exceptions.ClientError) as ctx:
            call(**kwargs)
        return ctx.exception.response["Error"]["Code"], ctx.exception.response["ResponseMetadata"]["HTTPStatusCode"]

    def test_every_operation(self):
        kv = self.service.client()
        arn = kv.create_signaling_channel(
            ChannelName="boto3-channel", ChannelType="SINGLE_MASTER",
            SingleMasterConfiguration={"MessageTtlSeconds": 45},
        )["ChannelARN"]
        self.assertRegex(arn, r"^arn:aws:kinesisvideo:us-west-2:\d{12}:channel/boto3-channel/\d{13}$")
        self.assertEqual(self.error_code(kv.create_signaling_channel, ChannelName="boto3-channel"),
                         ("ResourceInUseException", 400))

        info = kv.describe_signaling_channel(ChannelName="boto3-channel")["ChannelInfo"]
        self.assertEqual(info["ChannelARN"], arn)
        self.assertEqual(info["ChannelStatus"], "ACTIVE")
        self.assertEqual(info["SingleMasterConfiguration"]["MessageTtlSeconds"], 45)
        self.assertLess(abs(info["CreationTime"].timestamp() - time.time()), 60)
        self.assertEqual(kv.describe_signaling_channel(ChannelARN=arn)["ChannelInfo"]["ChannelName"],
                         "boto3-channel")
        self.assertEqual(self.error_code(kv.describe_signaling_channel, ChannelName="missing"),
                         ("ResourceNotFoundException", 404))

        for name in ["b-1", "b-2"]:
            kv.create_signaling_channel(ChannelName=name)
        names = [c["ChannelName"]
                 for page in kv.get_paginator("list_signaling_channels").paginate(PaginationConfig={"PageSize": 1})
                 for c in page["ChannelInfoList"]]
        self.assertEqual(names, ["b-1", "b-2", "boto3-channel"])

        endpoints = kv.get_signaling_channel_endpoint(
            ChannelARN=arn,
            SingleMasterChannelEndpointConfiguration={"Protocols": ["WSS", "HTTPS"], "Role": "VIEWER"},
        )["ResourceEndpointList"]
        by_protocol = {e["Protocol"]: e["ResourceEndpoint"] for e in endpoints}
        self.assertEqual(by_protocol["WSS"], self.service.data_plane.rstrip("/"))
        self.assertEqual(by_protocol["HTTPS"], self.service.control_plane)

        signaling = self.service.client("kinesis-video-signaling", endpoint=by_protocol["HTTPS"])
        ice = signaling.get_ice_server_config(ChannelARN=arn, ClientId="boto3-viewer")["IceServerList"]
        self.assertEqual(len(ice), 1)
        self.assertEqual(ice[0]["Uris"], ["turns:127.0.0.1:5349?transport=tcp"])
        expiry, name = ice[0]["Username"].split(":")
        self.assertEqual(name, "boto3-viewer")
        self.assertGreater(int(expiry), time.time() + 200)
        expected = base64.b64encode(hmac.new(TURN_SECRET.encode(), ice[0]["Username"].encode(),
                                             hashlib.sha1).digest()).decode()
        self.assertEqual(ice[0]["Password"], expected)

        self.assertEqual(self.error_code(kv.delete_signaling_channel, ChannelARN=arn, CurrentVersion="x"),
                         ("VersionMismatchException", 400))
        kv.delete_signaling_channel(ChannelARN=arn, CurrentVersion=info["Version"])
        self.assertEqual(self.error_code(kv.describe_signaling_channel, ChannelARN=arn),
                         ("ResourceNotFoundException", 404))

    def test_invalid_credentials_are_rejected(self):
        wrong = self.service.client(secret="not-the-secret")
        self.assertEqual(self.error_code(wrong.list_signaling_channels), ("InvalidSignatureException", 403))
        unknown = self.service.client(key_id="AKIDNOBODY")
        self.assertEqual(self.error_code(unknown.list_signaling_channels), ("UnrecognizedClientException", 403))
        token = self.service.client(token="a-token-nobody-issued")
        self.assertEqual(self.error_code(token.list_signaling_channels), ("UnrecognizedClientException", 403))
        # And the right credentials still work.
        self.assertEqual(self.service.client().list_signaling_channels()["ChannelInfoList"], [])


if __name__ == "__main__":
    unittest.main()
