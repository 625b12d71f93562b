// The NAT tests' viewer logic. The test calls window.startViewer(config) with
// { region, endpoint, credentials, channelName, clientId, iceTransportPolicy ('all'|'relay'),
//   stunUris: ['stun:…'] } and reads window.natViewer:
//   natViewer.summary()  -> getStats summary: selected pair (local/remote candidate type,
//                           protocol, relayProtocol, address), inbound video figures
//   natViewer.reoffer({iceRestart}) -> a new offer from this viewer on the same
//                           RTCPeerConnection; resolves once the answer is applied
// Offers the device (master) sends mid-session (an ICE restart it starts) are answered.
'use strict';

window.natViewer = {
  state: 'idle',
  error: null,
  log: [],
  pc: null,
  pcCount: 0,
  pcId: null,
  timings: {},
  counters: { offersSent: 0, answersReceived: 0, offersReceived: 0, answersSent: 0, candidatesSent: 0, candidatesReceived: 0, candidatesRefused: 0 },
  localCandidates: [],
  remoteCandidates: [],
};

function note(what) {
  const v = window.natViewer;
  v.log.push(`${Math.round(performance.now())} ${what}`);
  if (v.log.length > 300) v.log.shift();
  const el = document.getElementById('log');
  if (el) el.textContent = v.log.slice(-60).join('\n');
}

function candidateSummary(c) {
  if (!c) return null;
  return {
    type: c.candidateType,
    protocol: c.protocol,
    relayProtocol: c.relayProtocol || null,
    address: c.address || c.ip || null,
    port: c.port,
    url: c.url || null,
  };
}

/** What getStats says now: the selected pair from the transport, inbound video, all candidates. */
window.natViewer.summary = async function summary() {
  const v = window.natViewer;
  const pc = v.pc;
  if (!pc) return null;
  const report = await pc.getStats();
  let transport = null;
  let video = null;
  const locals = [];
  const remotes = [];
  report.forEach((r) => {
    if (r.type === 'transport' && r.selectedCandidatePairId) transport = r;
    if (r.type === 'inbound-rtp' && r.kind === 'video') video = r;
    if (r.type === 'local-candidate') locals.push(candidateSummary(r));
    if (r.type === 'remote-candidate') remotes.push(candidateSummary(r));
  });
  const pair = transport ? report.get(transport.selectedCandidatePairId) : null;
  return {
    pcId: v.pcId,
    pcCount: v.pcCount,
    connectionState: pc.connectionState,
    iceConnectionState: pc.iceConnectionState,
    signalingState: pc.signalingState,
    pair: pair ? {
      state: pair.state,
      local: candidateSummary(report.get(pair.localCandidateId)),
      remote: candidateSummary(report.get(pair.remoteCandidateId)),
      currentRoundTripTime: pair.currentRoundTripTime,
    } : null,
    video: video ? {
      framesDecoded: video.framesDecoded || 0,
      frameWidth: video.frameWidth || 0,
      frameHeight: video.frameHeight || 0,
      packetsReceived: video.packetsReceived || 0,
      bytesReceived: video.bytesReceived || 0,
      freezeCount: video.freezeCount || 0,
    } : null,
    localCandidates: locals,
    remoteCandidates: remotes,
    counters: { ...v.counters },
    timings: { ...v.timings },
  };
};

window.startViewer = async function startViewer(config) {
  const v = window.natViewer;
  const { KinesisVideoClient, DescribeSignalingChannelCommand, GetSignalingChannelEndpointCommand,
    KinesisVideoSignalingClient, GetIceServerConfigCommand } = window.AWSKVS;
  v.timings.start = performance.now();
  try {
    v.state = 'describing';
    const kinesisVideo = new KinesisVideoClient({ region: config.region, endpoint: config.endpoint, credentials: config.credentials });
    const { ChannelInfo } = await kinesisVideo.send(new DescribeSignalingChannelCommand({ ChannelName: config.channelName }));
    const channelARN = ChannelInfo.ChannelARN;
    note(`channel ${channelARN}`);
    const { ResourceEndpointList } = await kinesisVideo.send(new GetSignalingChannelEndpointCommand({
      ChannelARN: channelARN,
      SingleMasterChannelEndpointConfiguration: { Protocols: ['WSS', 'HTTPS'], Role: KVSWebRTC.Role.VIEWER },
    }));
    const endpoints = {};
    for (const e of ResourceEndpointList) endpoints[e.Protocol] = e.ResourceEndpoint;
    note(`endpoints ${JSON.stringify(endpoints)}`);
    const signalingRest = new KinesisVideoSignalingClient({ region: config.region, endpoint: endpoints.HTTPS, credentials: config.credentials });
    const { IceServerList } = await signalingRest.send(new GetIceServerConfigCommand({ ChannelARN: channelARN, ClientId: config.clientId }));
    // As the KVS examples do: the STUN server first, then every TURN server the service lists.
    const iceServers = (config.stunUris || []).map((u) => ({ urls: u }));
    for (const s of IceServerList || []) iceServers.push({ urls: s.Uris, username: s.Username, credential: s.Password });
    v.iceServers = iceServers;
    note(`ICE servers ${JSON.stringify(iceServers.map((s) => s.urls))}, policy ${config.iceTransportPolicy || 'all'}`);

    const signalingClient = new KVSWebRTC.SignalingClient({
      channelARN,
      channelEndpoint: endpoints.WSS,
      clientId: config.clientId,
      role: KVSWebRTC.Role.VIEWER,
      region: config.region,
      credentials: config.credentials,
      systemClockOffset: kinesisVideo.config.systemClockOffset,
    });
    const pc = new RTCPeerConnection({ iceServers, iceTransportPolicy: config.iceTransportPolicy || 'all' });
    v.pc = pc;
    v.pcCount += 1;
    v.pcId = `pc-${Math.random().toString(36).slice(2)}`;
    v.signalingClient = signalingClient;
    pc.addTransceiver('video', { direction: 'recvonly' });
    pc.addTransceiver('audio', { direction: 'recvonly' });
    pc.ontrack = (event) => {
      const video = document.getElementById('remote');
      if (!video.srcObject) video.srcObject = event.streams[0] || new MediaStream([event.track]);
      if (event.track.kind === 'video' && video.requestVideoFrameCallback && !v.timings.firstFrame) {
        video.requestVideoFrameCallback(() => {
          v.timings.firstFrame = performance.now();
          note(`first frame ${Math.round(v.timings.firstFrame - v.timings.start)} ms after start`);
        });
      }
    };
    pc.onicecandidate = ({ candidate }) => {
      if (!candidate) {
        note('gathering complete');
        return;
      }
      v.localCandidates.push(candidate.candidate);
      note(`local candidate ${candidate.type} ${candidate.protocol} ${candidate.address}:${candidate.port}`);
      v.counters.candidatesSent += 1;
      signalingClient.sendIceCandidate(candidate);
    };
    pc.onicecandidateerror = (e) => note(`candidate error ${e.url} ${e.errorCode} ${e.errorText}`);
    pc.onconnectionstatechange = () => note(`connection ${pc.connectionState}`);
    pc.oniceconnectionstatechange = () => note(`ice ${pc.iceConnectionState}`);
    pc.onsignalingstatechange = () => note(`signaling state ${pc.signalingState}`);

    // Descriptions and candidates are applied one at a time, in the order they arrive (two
    // offers in a row must not interleave their setRemoteDescription/createAnswer steps).
    let chain = Promise.resolve();
    const inOrder = (f) => { chain = chain.then(f, f); return chain; };
    const sendOffer = async (options = {}) => {
      const offer = await pc.createOffer(options);
      await pc.setLocalDescription(offer);
      v.counters.offersSent += 1;
      signalingClient.sendSdpOffer(pc.localDescription);
      note(`offer sent${options.iceRestart ? ' (ICE restart)' : ''}`);
    };
    let answerWaiters = [];
    /** A new offer on the same RTCPeerConnection; resolves once its answer is applied. */
    v.reoffer = async ({ iceRestart = false } = {}) => {
      const answered = new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error('no answer to the re-offer within 10 s')), 10000);
        answerWaiters.push(() => { clearTimeout(timer); resolve(); });
      });
      await inOrder(async () => {
        if (iceRestart) pc.restartIce();
        await sendOffer({ iceRestart });
      });
      await answered;
      return v.counters.answersReceived;
    };

    signalingClient.on('open', async () => {
      v.state = 'offering';
      note('signaling open');
      try {
        await sendOffer();
        v.timings.offerSent = performance.now();
      } catch (e) {
        v.error = `offer failed: ${e.message}`;
        note(v.error);
      }
    });
    signalingClient.on('sdpAnswer', (answer) => inOrder(async () => {
      note(`answer received (signaling state ${pc.signalingState})`);
      if (pc.signalingState !== 'have-local-offer') {
        note('answer ignored: no offer outstanding');
        return;
      }
      try {
        await pc.setRemoteDescription(answer);
        v.counters.answersReceived += 1;
        v.state = 'answered';
        const w = answerWaiters;
        answerWaiters = [];
        for (const f of w) f();
      } catch (e) {
        v.error = `applying the answer failed: ${e.message}`;
        note(v.error);
      }
    }));
    // An offer from the device (master): an ICE restart or renegotiation it starts. This
    // viewer is the polite side: an offer of its own in flight is rolled back.
    signalingClient.on('sdpOffer', (offer) => inOrder(async () => {
      v.counters.offersReceived += 1;
      note(`offer received from the device (signaling state ${pc.signalingState}, ice-ufrag ${(/a=ice-ufrag:(\S+)/.exec(offer.sdp) || [])[1]})`);
      try {
        if (pc.signalingState === 'have-local-offer') {
          note('rolling back our own offer');
          await pc.setLocalDescription({ type: 'rollback' });
        }
        await pc.setRemoteDescription(offer);
        await pc.setLocalDescription(await pc.createAnswer());
        signalingClient.sendSdpAnswer(pc.localDescription);
        v.counters.answersSent += 1;
        note('answer sent to the device');
      } catch (e) {
        v.error = `answering the device's offer failed: ${e.message}`;
        note(v.error);
      }
    }));
    signalingClient.on('iceCandidate', (candidate) => {
      v.counters.candidatesReceived += 1;
      v.remoteCandidates.push(candidate.candidate);
      note(`remote candidate ${candidate.candidate}`);
      // After the description it belongs to (an ICE restart's candidates follow its offer).
      inOrder(() => pc.addIceCandidate(candidate).catch((e) => {
        v.counters.candidatesRefused += 1;
        note(`candidate refused: ${e.message}`);
      }));
    });
    signalingClient.on('statusResponse', (s) => note(`status response ${JSON.stringify(s)}`));
    signalingClient.on('error', (e) => {
      v.error = `signaling error: ${e && e.message ? e.message : e}`;
      note(v.error);
    });
    signalingClient.on('close', () => note('signaling closed'));
    v.state = 'connecting';
    signalingClient.open();
  } catch (e) {
    v.state = 'failed';
    v.error = `${e.name || 'Error'}: ${e.message}`;
    note(v.error);
  }
};
