// The official KVS WebRTC SDK for JavaScript (its SignalingClient on Node) as a viewer of our
// device: both reach the local service over WSS with SigV4 — the device with `--endpoint` and
// `--ca-file`, as it would reach Amazon KVS — and the SDK's offer gets our device's answer and
// ICE candidates back. The offer is one headless Chromium 156 made (fixtures/), so the answer
// is negotiated against what a browser really sends.
'use strict';

const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const { spawn } = require('node:child_process');
const WS = require('ws');
const { SignalingClient, Role } = require('amazon-kinesis-video-streams-webrtc');
const { KinesisVideoClient, DescribeSignalingChannelCommand, GetSignalingChannelEndpointCommand } = require('@aws-sdk/client-kinesis-video');
const { NodeHttpHandler } = require('@smithy/node-http-handler');
const https = require('node:https');
const { PROGRAM, REGION, CREDENTIALS, startService, waitForOutput } = require('./lib/service');

const TIMEOUT = { timeout: 120_000 };
const WAIT_MS = 20_000;
const OFFER_SDP = fs.readFileSync(path.join(__dirname, 'fixtures', 'chromium-156-offer.sdp'), 'utf8');

function installWebSocket(ca) {
  global.WebSocket = class extends WS {
    constructor(url, protocols) {
      super(url, protocols, { ca });
    }
  };
}

/** Start our device against the service; resolves once it printed SignalingConnected. */
function startDevice(service, channel) {
  const args = ['--endpoint', service.controlPlane, '--ca-file', service.caPath, '--region', REGION,
    '--channel', channel, '--media-bind', '127.0.0.1', '--listen', '127.0.0.1:0'];
  const child = spawn(PROGRAM, args, {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, AWS_ACCESS_KEY_ID: CREDENTIALS.accessKeyId, AWS_SECRET_ACCESS_KEY: CREDENTIALS.secretAccessKey, AWS_SESSION_TOKEN: '' },
  });
  let out = '';
  child.stdout.on('data', (d) => { out += d; });
  child.stderr.on('data', (d) => { out += d; });
  const device = {
    output: () => out,
    stop() {
      child.kill('SIGTERM');
      return new Promise((resolve) => child.once('exit', resolve));
    },
  };
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`device did not connect within ${WAIT_MS} ms:\n${out}`)), WAIT_MS);
    child.stdout.on('data', () => {
      if (/SignalingConnected/.test(out)) {
        clearTimeout(timer);
        resolve(device);
      }
    });
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`device exited (${code}):\n${out}`));
    });
  });
}

function collect(emitter, event, count, what) {
  return new Promise((resolve, reject) => {
    const got = [];
    const timer = setTimeout(() => reject(new Error(`timed out waiting for ${what} (got ${got.length})`)), WAIT_MS);
    emitter.on(event, (...args) => {
      got.push(args);
      if (got.length === count) {
        clearTimeout(timer);
        resolve(got);
      }
    });
  });
}

test('the official SignalingClient as a viewer gets our device\'s answer and candidates over WSS', TIMEOUT, async (t) => {
  const service = await startService({ extraArgs: ['--channel', 'device-conformance'] });
  t.after(() => service.stop());
  const device = await startDevice(service, 'device-conformance');
  t.after(() => device.stop());
  installWebSocket(service.ca);

  const kv = new KinesisVideoClient({
    region: REGION,
    endpoint: service.controlPlane,
    credentials: { ...CREDENTIALS },
    requestHandler: new NodeHttpHandler({ httpsAgent: new https.Agent({ ca: service.ca }) }),
  });
  const { ChannelInfo } = await kv.send(new DescribeSignalingChannelCommand({ ChannelName: 'device-conformance' }));
  const { ResourceEndpointList } = await kv.send(new GetSignalingChannelEndpointCommand({
    ChannelARN: ChannelInfo.ChannelARN,
    SingleMasterChannelEndpointConfiguration: { Protocols: ['WSS', 'HTTPS'], Role: 'VIEWER' },
  }));
  const wss = ResourceEndpointList.find((e) => e.Protocol === 'WSS').ResourceEndpoint;
  const viewer = new SignalingClient({
    channelARN: ChannelInfo.ChannelARN,
    channelEndpoint: wss,
    role: Role.VIEWER,
    clientId: 'js-sdk-viewer',
    region: REGION,
    credentials: { ...CREDENTIALS },
    systemClockOffset: 0,
  });
  t.after(() => viewer.close());
  const opened = collect(viewer, 'open', 1, 'the viewer to connect');
  viewer.open();
  await opened;

  const answers = collect(viewer, 'sdpAnswer', 1, 'the device\'s answer');
  const candidates = collect(viewer, 'iceCandidate', 1, 'a candidate from the device');
  viewer.sendSdpOffer({ type: 'offer', sdp: OFFER_SDP });
  const [[answer]] = await answers;
  assert.equal(answer.type, 'answer');
  assert.match(answer.sdp, /^v=0\r\n/);
  assert.match(answer.sdp, /a=fingerprint:sha-256 /);
  assert.match(answer.sdp, /a=rtpmap:\d+ H264\/90000/);
  assert.match(answer.sdp, /packetization-mode=1/);
  assert.match(answer.sdp, /a=rtpmap:\d+ opus\/48000\/2/);
  assert.match(answer.sdp, /m=application \d+ UDP\/DTLS\/SCTP webrtc-datachannel/);
  // The answer is for this offer: same BUNDLE group of mids.
  assert.match(answer.sdp, /a=group:BUNDLE 0 1 2/);
  const [[candidate]] = await candidates;
  assert.match(candidate.candidate, /^candidate:.* 127\.0\.0\.1 \d+ typ host/);
  await waitForOutput(device.output, /PeerConnectionRequested \[js-sdk-viewer\]/);
});
