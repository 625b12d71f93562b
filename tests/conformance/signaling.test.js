// The official KVS WebRTC SDK for JavaScript (npm amazon-kinesis-video-streams-webrtc) on Node:
// its SignalingClient connects to the local service over WSS, as master and as viewer, with URLs
// presigned by its own SigV4 signer, and the two exchange an offer, an answer and ICE candidates.
'use strict';

const test = require('node:test');
const assert = require('node:assert/strict');
const https = require('node:https');
const WS = require('ws');
const { SignalingClient, Role } = require('amazon-kinesis-video-streams-webrtc');
const {
  KinesisVideoClient,
  CreateSignalingChannelCommand,
  GetSignalingChannelEndpointCommand,
} = require('@aws-sdk/client-kinesis-video');
const { NodeHttpHandler } = require('@smithy/node-http-handler');
const { REGION, CREDENTIALS, startService, waitForOutput } = require('./lib/service');

const TIMEOUT = { timeout: 120_000 };
const WAIT_MS = 15_000;

// Node 20 has no global WebSocket; the SDK uses the global one. Ours trusts the service's CA.
function installWebSocket(ca) {
  global.WebSocket = class extends WS {
    constructor(url, protocols) {
      super(url, protocols, { ca });
    }
  };
}

function waitFor(emitter, event, what) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), WAIT_MS);
    emitter.once(event, (...args) => {
      clearTimeout(timer);
      resolve(args);
    });
  });
}

async function channelWithEndpoints(service, name) {
  const kv = new KinesisVideoClient({
    region: REGION,
    endpoint: service.controlPlane,
    credentials: { ...CREDENTIALS },
    requestHandler: new NodeHttpHandler({ httpsAgent: new https.Agent({ ca: service.ca }) }),
  });
  const { ChannelARN } = await kv.send(new CreateSignalingChannelCommand({ ChannelName: name }));
  const endpoint = async (Role) => {
    const r = await kv.send(new GetSignalingChannelEndpointCommand({
      ChannelARN,
      SingleMasterChannelEndpointConfiguration: { Protocols: ['WSS', 'HTTPS'], Role },
    }));
    return r.ResourceEndpointList.find((e) => e.Protocol === 'WSS').ResourceEndpoint;
  };
  return { ChannelARN, masterEndpoint: await endpoint('MASTER'), viewerEndpoint: await endpoint('VIEWER') };
}

function client(role, channelARN, channelEndpoint, extra = {}) {
  return new SignalingClient({
    channelARN,
    channelEndpoint,
    role,
    region: REGION,
    credentials: { ...CREDENTIALS },
    ...(role === Role.VIEWER ? { clientId: extra.clientId || 'js-viewer-1' } : {}),
    systemClockOffset: 0,
    ...extra.config,
  });
}

test('official SignalingClient master and viewer exchange offer, answer and candidates over WSS', TIMEOUT, async (t) => {
  const service = await startService();
  t.after(() => service.stop());
  installWebSocket(service.ca);
  const { ChannelARN, masterEndpoint, viewerEndpoint } = await channelWithEndpoints(service, 'js-sdk-channel');
  assert.match(masterEndpoint, /^wss:\/\//);

  const master = client(Role.MASTER, ChannelARN, masterEndpoint);
  const viewer = client(Role.VIEWER, ChannelARN, viewerEndpoint, { clientId: 'js-viewer-1' });
  t.after(() => { master.close(); viewer.close(); });
  const masterOpen = waitFor(master, 'open', 'the master to connect');
  master.open();
  await masterOpen;
  const viewerOpen = waitFor(viewer, 'open', 'the viewer to connect');
  viewer.open();
  await viewerOpen;

  const offer = { type: 'offer', sdp: 'v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n' };
  const gotOffer = waitFor(master, 'sdpOffer', 'the offer at the master');
  viewer.sendSdpOffer(offer);
  const [offerReceived, from] = await gotOffer;
  assert.deepEqual(offerReceived, offer);
  assert.equal(from, 'js-viewer-1');

  const answer = { type: 'answer', sdp: 'v=0\r\no=- 3 4 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n' };
  const gotAnswer = waitFor(viewer, 'sdpAnswer', 'the answer at the viewer');
  master.sendSdpAnswer(answer, 'js-viewer-1');
  const [answerReceived] = await gotAnswer;
  assert.deepEqual(answerReceived, answer);

  const candidate = { candidate: 'candidate:1 1 udp 2122260223 127.0.0.1 50000 typ host', sdpMid: '0', sdpMLineIndex: 0 };
  const atMaster = waitFor(master, 'iceCandidate', 'a candidate at the master');
  viewer.sendIceCandidate(candidate);
  const [c1, c1From] = await atMaster;
  assert.equal(c1.candidate, candidate.candidate);
  assert.equal(c1From, 'js-viewer-1');
  const atViewer = waitFor(viewer, 'iceCandidate', 'a candidate at the viewer');
  master.sendIceCandidate({ ...candidate, candidate: candidate.candidate.replace('50000', '50001') }, 'js-viewer-1');
  const [c2] = await atViewer;
  assert.match(c2.candidate, /50001/);
});

test('a SignalingClient with the wrong secret is refused and never opens', TIMEOUT, async (t) => {
  const service = await startService();
  t.after(() => service.stop());
  installWebSocket(service.ca);
  const { ChannelARN, viewerEndpoint } = await channelWithEndpoints(service, 'refused-channel');
  const viewer = new SignalingClient({
    channelARN: ChannelARN,
    channelEndpoint: viewerEndpoint,
    role: Role.VIEWER,
    clientId: 'intruder',
    region: REGION,
    credentials: { accessKeyId: CREDENTIALS.accessKeyId, secretAccessKey: 'wrong' },
  });
  let opened = false;
  viewer.on('open', () => { opened = true; });
  const failed = new Promise((resolve) => {
    viewer.on('error', resolve);
    viewer.on('close', resolve);
  });
  viewer.open();
  await failed;
  assert.equal(opened, false);
  await waitForOutput(service.output, /refusing an unauthenticated signaling connection/);
  viewer.close();
});
