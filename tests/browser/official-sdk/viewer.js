// The viewer logic of the official-SDK page. The test calls window.startViewer(config) with
// { region, endpoint, credentials, channelName, clientId } and reads window.sdkViewer.
'use strict';

window.sdkViewer = { state: 'idle', error: null, log: [], pc: null, timings: {} };

function note(what) {
  const v = window.sdkViewer;
  v.log.push(`${Math.round(performance.now())} ${what}`);
  if (v.log.length > 200) v.log.shift();
  document.getElementById('log').textContent = v.log.join('\n');
}

window.startViewer = async function startViewer(config) {
  const v = window.sdkViewer;
  const { KinesisVideoClient, DescribeSignalingChannelCommand, GetSignalingChannelEndpointCommand,
    KinesisVideoSignalingClient, GetIceServerConfigCommand } = window.AWSKVS;
  try {
    v.state = 'describing';
    const kinesisVideo = new KinesisVideoClient({
      region: config.region,
      endpoint: config.endpoint,
      credentials: config.credentials,
    });
    const { ChannelInfo } = await kinesisVideo.send(
      new DescribeSignalingChannelCommand({ ChannelName: config.channelName }));
    const channelARN = ChannelInfo.ChannelARN;
    note(`channel ${channelARN}`);
    const { ResourceEndpointList } = await kinesisVideo.send(new GetSignalingChannelEndpointCommand({
      ChannelARN: channelARN,
      SingleMasterChannelEndpointConfiguration: { Protocols: ['WSS', 'HTTPS'], Role: KVSWebRTC.Role.VIEWER },
    }));
    const endpoints = {};
    for (const e of ResourceEndpointList) endpoints[e.Protocol] = e.ResourceEndpoint;
    note(`endpoints ${JSON.stringify(endpoints)}`);
    const signalingRest = new KinesisVideoSignalingClient({
      region: config.region,
      endpoint: endpoints.HTTPS,
      credentials: config.credentials,
    });
    const { IceServerList } = await signalingRest.send(new GetIceServerConfigCommand({
      ChannelARN: channelARN,
      ClientId: config.clientId,
    }));
    const iceServers = IceServerList.map((s) => ({ urls: s.Uris, username: s.Username, credential: s.Password }));
    v.iceServers = iceServers;
    note(`${iceServers.length} ICE servers`);

    const signalingClient = new KVSWebRTC.SignalingClient({
      channelARN,
      channelEndpoint: endpoints.WSS,
      clientId: config.clientId,
      role: KVSWebRTC.Role.VIEWER,
      region: config.region,
      credentials: config.credentials,
      systemClockOffset: kinesisVideo.config.systemClockOffset,
    });
    // `relay` makes the browser use TURN only (the test of minted TURN credentials).
    const pc = new RTCPeerConnection({ iceServers: config.iceServers || iceServers, iceTransportPolicy: config.iceTransportPolicy || 'all' });
    v.pc = pc;
    v.signalingClient = signalingClient;
    pc.addTransceiver('video', { direction: 'recvonly' });
    pc.addTransceiver('audio', { direction: 'recvonly' });
    pc.ontrack = (event) => {
      const video = document.getElementById('remote');
      if (!video.srcObject) video.srcObject = event.streams[0] || new MediaStream([event.track]);
      if (event.track.kind === 'video' && video.requestVideoFrameCallback) {
        video.requestVideoFrameCallback(() => {
          v.timings.firstFrame = performance.now();
          note('first frame');
        });
      }
    };
    pc.onicecandidate = ({ candidate }) => {
      if (!candidate) return;
      note(`local candidate ${candidate.type}`);
      signalingClient.sendIceCandidate(candidate);
    };
    pc.onconnectionstatechange = () => note(`connection ${pc.connectionState}`);
    signalingClient.on('open', async () => {
      v.state = 'offering';
      await pc.setLocalDescription(await pc.createOffer());
      v.timings.offerSent = performance.now();
      signalingClient.sendSdpOffer(pc.localDescription);
      note('offer sent');
    });
    signalingClient.on('sdpAnswer', async (answer) => {
      note('answer received');
      v.state = 'answered';
      await pc.setRemoteDescription(answer);
    });
    signalingClient.on('iceCandidate', (candidate) => {
      pc.addIceCandidate(candidate).catch((e) => note(`candidate refused: ${e.message}`));
    });
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
