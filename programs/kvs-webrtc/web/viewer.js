// kvs-webrtc viewer page.
//
// Joins the device's signaling channel as a KVS *viewer* over the KVS WebSocket data plane,
// offers recvonly video (H.264 preferred), sendrecv audio and a data channel, trickles ICE both
// ways, plays what arrives, and shows live statistics from RTCPeerConnection.getStats() every
// second.
//
// Push-to-talk: the audio m-line is sendrecv from the start, with no track on the sender, so
// nothing is sent and no microphone is asked for until the button is first pressed. Then the
// microphone (getUserMedia) goes onto the sender with replaceTrack (no renegotiation) and its
// track is enabled only while the button is held (or toggled on with the keyboard); released,
// the browser sends silence, and the device plays nothing (its floor is free again after 1 s).
//
// Send my camera: with the checkbox ticked (or `?camera=1` in the address) the page asks for
// the camera and microphone before its offer, and offers sendrecv video (the camera on the
// sender) and sendrecv audio with the microphone live, like a video call; push-to-talk is off
// meanwhile (the microphone is already on). A device started with `--record-dir` records it,
// one with `--video-player-cmd` shows it. Ticking or unticking reconnects.
//
// Plain modern JavaScript, no framework, no build step: the program embeds this file as is.
// `window.kvsViewer` is a small read-mostly hook for tests and for poking at the page from the
// browser console; the page itself never depends on it.
'use strict';

(() => {
  const STATS_INTERVAL_MS = 1000;
  const DATA_CHANNEL_LABEL = 'kvsDataChannel';
  const MAX_LOG_ENTRIES = 200; // the console keeps the most recent entries only
  const ANSWER_TIMEOUT_MS = 20000;

  const $ = (id) => document.getElementById(id);
  const ui = {
    pill: $('state-pill'),
    stateText: $('state-text'),
    banner: $('banner'),
    bannerTitle: $('banner-title'),
    bannerText: $('banner-text'),
    video: $('remote-video'),
    overlay: $('video-overlay'),
    overlayText: $('overlay-text'),
    unmute: $('unmute-btn'),
    talk: $('talk-btn'),
    talkLabel: $('talk-label'),
    camera: $('camera-check'),
    reconnect: $('reconnect-btn'),
    clientId: $('client-id'),
    channelName: $('channel-name'),
    signalingUrl: $('signaling-url'),
    dcState: $('dc-state'),
    dcForm: $('dc-form'),
    dcInput: $('dc-input'),
    dcSend: $('dc-send'),
    dcLog: $('dc-log'),
    stat: {
      connection: $('stat-connection'),
      resolution: $('stat-resolution'),
      fps: $('stat-fps'),
      bitrate: $('stat-bitrate'),
      rtt: $('stat-rtt'),
      lost: $('stat-lost'),
      ttff: $('stat-ttff'),
      codec: $('stat-codec'),
      audio: $('stat-audio'),
      frames: $('stat-frames'),
    },
  };

  // ---- small helpers ------------------------------------------------------------------------

  /** base64 of the UTF-8 bytes of `text` (KVS payloads are base64 of UTF-8 JSON). */
  function utf8ToBase64(text) {
    const bytes = new TextEncoder().encode(text);
    let binary = '';
    for (let i = 0; i < bytes.length; i += 0x8000) {
      binary += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
    }
    return btoa(binary);
  }

  /** Inverse of utf8ToBase64; throws on malformed input. */
  function base64ToUtf8(b64) {
    const binary = atob(b64);
    const bytes = new Uint8Array(binary.length);
    for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
    return new TextDecoder('utf-8', { fatal: true }).decode(bytes);
  }

  function randomId(prefix) {
    const bytes = new Uint8Array(8);
    crypto.getRandomValues(bytes);
    return prefix + Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
  }

  /** Read a field whatever its capitalisation (the C SDK capitalises keys). */
  function field(obj, name) {
    if (!obj || typeof obj !== 'object') return undefined;
    if (name in obj) return obj[name];
    const lower = name.toLowerCase();
    for (const k of Object.keys(obj)) if (k.toLowerCase() === lower) return obj[k];
    return undefined;
  }

  function formatBitrate(bps) {
    if (bps == null) return '–';
    if (bps >= 1e6) return (bps / 1e6).toFixed(2) + ' Mbit/s';
    return Math.round(bps / 1e3) + ' kbit/s';
  }

  /** Accept RTCIceServer objects and KVS-style {Uris, Username, Password} entries alike. */
  function toIceServers(list) {
    if (!Array.isArray(list)) return [];
    return list
      .map((s) => {
        const urls = field(s, 'urls') ?? field(s, 'uris');
        if (!urls || (Array.isArray(urls) && urls.length === 0)) return null;
        const server = { urls };
        const username = field(s, 'username');
        const credential = field(s, 'credential') ?? field(s, 'password');
        if (username != null) server.username = username;
        if (credential != null) server.credential = credential;
        return server;
      })
      .filter(Boolean);
  }

  // ---- state shown to the user and to tests -------------------------------------------------

  const STATE_LABELS = {
    idle: 'starting',
    'loading-config': 'loading configuration',
    signaling: 'connecting to signaling',
    'offer-sent': 'waiting for the device',
    connecting: 'connecting media',
    connected: 'connected',
    disconnected: 'connection interrupted',
    failed: 'failed',
    refused: 'refused by the device',
    'signaling-error': 'signaling unreachable',
    closed: 'closed',
  };

  const hook = {
    state: 'idle',
    clientId: null,
    config: null,
    pc: null,
    dataChannel: null,
    timeToFirstFrameMs: null,
    firstFrameVia: null,
    lastEcho: null,
    error: null,
    messages: [], // signaling message types received, in order (for debugging)
    latestStats: null,
    sendingCamera: false, // the camera goes to the device (Send my camera)
  };

  function setState(state) {
    if (hook.state === state) return;
    hook.state = state;
    ui.stateText.textContent = STATE_LABELS[state] || state;
    let tone = 'idle';
    if (state === 'connected') tone = 'ok';
    else if (['failed', 'refused', 'signaling-error'].includes(state)) tone = 'bad';
    else if (['signaling', 'offer-sent', 'connecting', 'loading-config', 'disconnected'].includes(state)) tone = 'busy';
    ui.pill.className = 'pill pill-' + tone;
    if (state === 'connected') {
      if (hook.timeToFirstFrameMs == null) ui.overlayText.textContent = 'Waiting for the first frame…';
    } else if (['failed', 'refused', 'signaling-error', 'closed'].includes(state)) {
      ui.overlay.classList.add('stopped');
      ui.overlay.hidden = false;
      ui.overlayText.textContent = STATE_LABELS[state];
    }
  }

  function showBanner(kind, title, text) {
    ui.banner.hidden = false;
    ui.banner.className = 'banner banner-' + kind;
    ui.bannerTitle.textContent = title;
    ui.bannerText.textContent = text;
  }

  function hideBanner() {
    ui.banner.hidden = true;
  }

  /** A user-facing failure: banner + state + kept for tests. */
  function fail(state, title, text, extra) {
    hook.error = Object.assign({ state, title, message: text }, extra || {});
    setState(state);
    showBanner('error', title, text);
  }

  // ---- one viewing session ------------------------------------------------------------------

  let session = null;

  class Session {
    constructor(config) {
      this.config = config;
      // The page server signs each signaling URL for one client id; without one (an older
      // server) the page makes its own.
      this.clientId = config.clientId || randomId('viewer-');
      this.ws = null;
      this.pc = null;
      this.dc = null;
      this.closed = false;
      this.offerCorrelationId = null;
      this.offerSentAt = null;
      this.remoteDescriptionSet = false;
      this.pendingRemoteCandidates = [];
      this.candidatesBeforeOffer = []; // our own, gathered while signaling was still connecting
      this.pendingEchoes = []; // {key, sentAt} in send order, matched on echo
      this.echoWaiters = []; // resolvers waiting for the next echo
      this.prevVideo = null; // previous inbound-rtp video report, for bitrate
      this.statsTimer = null;
      this.answerTimer = null;
      this.stream = new MediaStream();
      hook.clientId = this.clientId;
      ui.clientId.textContent = 'viewer id ' + this.clientId;
    }

    start() {
      const base = this.config.signalingUrl || `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/`;
      let url;
      try {
        url = new URL(base);
      } catch (e) {
        fail('signaling-error', 'Bad signaling address', `The configuration names "${base}", which is not a URL.`);
        return;
      }
      // A presigned URL is used exactly as given: changing its query would break the signature.
      const presigned = url.searchParams.has('X-Amz-Signature');
      if (!presigned) {
        url.searchParams.set('X-Amz-ChannelARN', this.config.channelArn || '');
        url.searchParams.set('X-Amz-ClientId', this.clientId);
      }
      // Shown without the query: the signature is nobody's business on screen.
      const shown = url.origin + url.pathname;
      ui.signalingUrl.textContent = shown;
      setState('signaling');

      let opened = false;
      try {
        this.ws = new WebSocket(presigned ? base : url.toString());
      } catch (e) {
        fail('signaling-error', 'Cannot reach signaling', `${shown}: ${e.message}`);
        return;
      }
      // The peer connection and its offer are made while the WebSocket connects (both take tens
      // of milliseconds on a fresh page): the browser's ICE ports are ready by the time the
      // answer arrives, and the offer leaves the moment signaling is open.
      const prepared = this.preparePeer();
      prepared.catch(() => {}); // reported once signaling is open (or never, if it fails first)
      this.ws.onopen = () => {
        opened = true;
        prepared
          .then(() => this.sendOffer())
          .catch((e) => {
            if (!this.closed) this.onFatal('Could not start the call', e);
          });
      };
      this.ws.onmessage = (ev) => this.onSignalingMessage(ev.data);
      this.ws.onerror = () => {
        /* the close event that follows says more */
      };
      this.ws.onclose = (ev) => {
        if (this.closed) return;
        if (!opened) {
          fail(
            'signaling-error',
            'Cannot reach the signaling service',
            `Connecting to ${shown} failed (close code ${ev.code}). Is kvs-webrtc still running? ` +
              'Start it again (the page address changes with each run when it listens on port 0) and reload this page.',
          );
          this.close();
          return;
        }
        const connected = this.pc && this.pc.connectionState === 'connected';
        if (connected) {
          // Media flows peer to peer; losing signaling only matters for a later reconnect.
          showBanner('warn', 'Signaling closed', `The signaling connection closed (code ${ev.code}); video keeps playing. Use Reconnect if it stops.`);
        } else if (!['refused', 'failed'].includes(hook.state)) {
          fail('signaling-error', 'Signaling closed', `The signaling connection closed (code ${ev.code}) before the call was set up. Is kvs-webrtc still running?`);
          this.close();
        }
      };
    }

    async preparePeer() {
      const pc = new RTCPeerConnection({ iceServers: toIceServers(this.config.iceServers) });
      this.pc = pc;
      hook.pc = pc;

      let camera = null;
      if (ui.camera.checked) {
        try {
          if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
            throw new Error('this browser gives no camera to this page (it needs HTTPS or localhost)');
          }
          camera = await navigator.mediaDevices.getUserMedia({ video: true, audio: true });
        } catch (e) {
          showBanner('warn', 'Camera', `No camera to send: ${e.message || e}`);
        }
        if (this.closed) {
          if (camera) camera.getTracks().forEach((t) => t.stop());
          return;
        }
      }
      const camTrack = camera && camera.getVideoTracks()[0];
      const video = pc.addTransceiver(camTrack || 'video', { direction: camTrack ? 'sendrecv' : 'recvonly' });
      preferH264(video);
      if (camTrack) {
        // Keep the picture size and lower the frame rate under load instead: a recording
        // keeps one size (its header has it), and a display does not jump.
        try {
          const params = video.sender.getParameters();
          params.degradationPreference = 'maintain-resolution';
          await video.sender.setParameters(params);
        } catch (e) {
          console.warn('degradationPreference not set', e);
        }
      }
      // sendrecv with no track: nothing goes out until push-to-talk (see the top of the file),
      // or the camera's microphone, live.
      this.audioTransceiver = pc.addTransceiver('audio', { direction: 'sendrecv' });
      if (camera) {
        this.cameraStream = camera;
        const mic = camera.getAudioTracks()[0];
        if (mic) await this.audioTransceiver.sender.replaceTrack(mic);
        hook.sendingCamera = Boolean(camTrack);
      }
      ui.talk.disabled = Boolean(camera);

      // Created before the offer so the offer carries the SCTP m-line.
      this.attachDataChannel(pc.createDataChannel(DATA_CHANNEL_LABEL));

      pc.ontrack = (ev) => {
        if (!this.stream.getTracks().includes(ev.track)) this.stream.addTrack(ev.track);
        if (ui.video.srcObject !== this.stream) ui.video.srcObject = this.stream;
        ui.unmute.disabled = false;
        ui.video.play().catch(() => {
          /* autoplay of a muted video is allowed; ignore a racing play() */
        });
      };
      pc.onicecandidate = (ev) => {
        if (!ev.candidate || !ev.candidate.candidate) return; // end of candidates: nothing to send
        const candidate = {
          candidate: ev.candidate.candidate,
          sdpMid: ev.candidate.sdpMid,
          sdpMLineIndex: ev.candidate.sdpMLineIndex,
        };
        // Gathered before the offer left: sent right after it (the device needs the offer first).
        if (this.offerSentAt === null) this.candidatesBeforeOffer.push(candidate);
        else this.send('ICE_CANDIDATE', candidate);
      };
      pc.onconnectionstatechange = () => this.onConnectionState();

      const offer = await pc.createOffer();
      await pc.setLocalDescription(offer);
    }

    /** Signaling is open and the peer connection prepared: the offer goes out. */
    sendOffer() {
      const pc = this.pc;
      if (this.closed || !pc) return;
      this.offerCorrelationId = randomId('offer-');
      this.offerSentAt = performance.now();
      this.send('SDP_OFFER', { type: 'offer', sdp: pc.localDescription.sdp }, this.offerCorrelationId);
      for (const c of this.candidatesBeforeOffer.splice(0)) this.send('ICE_CANDIDATE', c);
      setState('offer-sent');
      this.watchFirstFrame();
      this.statsTimer = setInterval(() => this.updateStats().catch(() => {}), STATS_INTERVAL_MS);
      this.answerTimer = setTimeout(() => {
        if (!this.remoteDescriptionSet && !this.closed && hook.state === 'offer-sent') {
          fail('failed', 'No answer from the device', `The device did not answer within ${ANSWER_TIMEOUT_MS / 1000} s. Is it connected to channel "${this.config.channelName || this.config.channelArn}"?`);
        }
      }, ANSWER_TIMEOUT_MS);
    }

    send(action, payload, correlationId) {
      if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return;
      const msg = {
        action,
        recipientClientId: '',
        messagePayload: utf8ToBase64(JSON.stringify(payload)),
      };
      if (correlationId) msg.correlationId = correlationId;
      this.ws.send(JSON.stringify(msg));
    }

    onSignalingMessage(raw) {
      if (this.closed || typeof raw !== 'string' || raw.length === 0) return; // keep-alives are empty
      let msg;
      try {
        msg = JSON.parse(raw);
      } catch (e) {
        console.warn('ignoring a non-JSON signaling message', raw.slice(0, 200));
        return;
      }
      const type = field(msg, 'messageType');
      hook.messages.push(type);
      if (hook.messages.length > 500) hook.messages.shift();
      let payload = null;
      const encoded = field(msg, 'messagePayload');
      if (typeof encoded === 'string' && encoded.length > 0) {
        try {
          payload = JSON.parse(base64ToUtf8(encoded));
        } catch (e) {
          console.warn(`ignoring ${type}: payload is not base64 JSON`, e);
          return;
        }
      }
      switch (type) {
        case 'SDP_ANSWER':
          this.onAnswer(payload).catch((e) => this.onFatal('The device sent an unusable answer', e));
          break;
        case 'SDP_OFFER':
          // The device restarts ICE itself when its path to us broke (a NAT forgot its
          // mapping, an address moved): answer on the same connection, no page reload.
          this.onDeviceOffer(payload).catch((e) => console.warn('ignoring an offer from the device', e));
          break;
        case 'ICE_CANDIDATE':
          this.onRemoteCandidate(payload);
          break;
        case 'STATUS_RESPONSE':
          this.onStatusResponse(field(msg, 'statusResponse') || {});
          break;
        case 'GO_AWAY':
          showBanner('warn', 'Signaling is going away', 'The signaling service asked clients to reconnect. Video keeps playing; use Reconnect if it stops.');
          break;
        case 'RECONNECT_ICE_SERVER':
          break; // nothing to refresh: ICE servers come from /config.json
        default:
          console.debug('ignoring signaling message', type);
      }
    }

    async onAnswer(payload) {
      if (!payload) return;
      // The device refuses an offer (e.g. its viewer limit) with an answer carrying a reason
      // (docs/PROTOCOL.md): KVS has no client-to-client error message. The same answer on a
      // live session ends it (e.g. the owner switched streaming off).
      const refusal = field(payload, 'kvsWebrtcError');
      if (refusal) {
        const reason = field(refusal, 'reason') || 'no reason given';
        const code = field(refusal, 'code');
        const title = this.remoteDescriptionSet ? 'The device ended this session' : 'The device refused this viewer';
        fail('refused', title, code ? `${reason} (${code})` : reason, { code, reason });
        this.close(true);
        return;
      }
      if (this.remoteDescriptionSet) return;
      clearTimeout(this.answerTimer);
      await this.pc.setRemoteDescription({ type: 'answer', sdp: field(payload, 'sdp') });
      this.remoteDescriptionSet = true;
      if (hook.state === 'offer-sent') setState('connecting');
      const queued = this.pendingRemoteCandidates.splice(0);
      for (const c of queued) await this.addRemoteCandidate(c);
    }

    async onDeviceOffer(payload) {
      const sdp = payload && field(payload, 'sdp');
      if (!sdp || !this.pc || !this.remoteDescriptionSet || this.closed) return;
      // Our own offer (if any) gives way: setRemoteDescription rolls it back.
      await this.pc.setRemoteDescription({ type: 'offer', sdp });
      await this.pc.setLocalDescription(await this.pc.createAnswer());
      this.send('SDP_ANSWER', { type: 'answer', sdp: this.pc.localDescription.sdp });
      hook.iceRestarts = (hook.iceRestarts || 0) + 1;
    }

    onRemoteCandidate(payload) {
      if (!payload) return;
      const candidate = field(payload, 'candidate');
      if (!candidate) return; // end-of-candidates marker
      const init = { candidate, sdpMid: field(payload, 'sdpMid'), sdpMLineIndex: field(payload, 'sdpMLineIndex') };
      if (init.sdpMid == null && init.sdpMLineIndex == null) init.sdpMLineIndex = 0;
      if (!this.remoteDescriptionSet) this.pendingRemoteCandidates.push(init);
      else this.addRemoteCandidate(init);
    }

    async addRemoteCandidate(init) {
      try {
        await this.pc.addIceCandidate(init);
      } catch (e) {
        console.warn('ignoring a remote ICE candidate the browser rejected', init.candidate, e);
      }
    }

    onStatusResponse(status) {
      const correlationId = field(status, 'correlationId');
      const errorType = field(status, 'errorType') || 'Error';
      const code = field(status, 'statusCode');
      const reason = field(status, 'description') || field(status, 'reason') || field(status, 'message');
      const text = [reason, `${errorType}${code != null ? ', status ' + code : ''}`].filter(Boolean).join(' — ');
      if (correlationId && correlationId === this.offerCorrelationId && !this.remoteDescriptionSet) {
        fail('refused', 'The offer was refused', text, { code: errorType, statusCode: code, reason: reason || errorType });
        this.close();
      } else {
        hook.error = { state: hook.state, title: 'Signaling reported an error', message: text, statusCode: code, reason: reason || errorType };
        showBanner('warn', 'Signaling reported an error', text);
      }
    }

    onConnectionState() {
      if (this.closed) return;
      const s = this.pc.connectionState;
      ui.stat.connection.textContent = s;
      if (s === 'connected') {
        setState('connected');
        if (ui.banner.classList.contains('banner-warn') && ui.bannerTitle.textContent === 'Connection interrupted') hideBanner();
      } else if (s === 'connecting') {
        if (hook.state !== 'connected') setState('connecting');
      } else if (s === 'disconnected') {
        setState('disconnected');
        showBanner('warn', 'Connection interrupted', 'The media connection was interrupted; the browser is trying to restore it.');
      } else if (s === 'failed') {
        fail('failed', 'The media connection failed', 'ICE/DTLS could not connect to the device. Check that the device is reachable from this browser, then press Reconnect.');
        this.close(true);
      } else if (s === 'closed') {
        setState('closed');
      }
    }

    /** Push-to-talk: enable (true) or mute (false) our microphone on the audio sender. */
    async talk(on) {
      if (!this.audioTransceiver || this.closed) return false;
      if (on && !this.micTrack) {
        if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
          throw new Error('this browser gives no microphone to this page (it needs HTTPS or localhost)');
        }
        const stream = await navigator.mediaDevices.getUserMedia({ audio: true, video: false });
        const track = stream.getAudioTracks()[0];
        if (this.closed) {
          track.stop();
          return false;
        }
        this.micTrack = track;
        this.micTrack.enabled = false;
        await this.audioTransceiver.sender.replaceTrack(track);
      }
      if (this.micTrack) this.micTrack.enabled = on;
      hook.talking = Boolean(on && this.micTrack);
      return hook.talking;
    }

    onFatal(title, err) {
      console.error(title, err);
      fail('failed', title, String(err && err.message ? err.message : err));
      this.close();
    }

    // ---- first frame ----

    watchFirstFrame() {
      const done = (via) => {
        if (hook.timeToFirstFrameMs != null || this.offerSentAt == null || this.closed) return;
        hook.timeToFirstFrameMs = Math.round(performance.now() - this.offerSentAt);
        hook.firstFrameVia = via;
        ui.stat.ttff.textContent = `${hook.timeToFirstFrameMs} ms`;
        ui.overlay.hidden = true;
        console.info(`first frame after ${hook.timeToFirstFrameMs} ms (${via})`);
      };
      this.markFirstFrame = done;
      if (typeof ui.video.requestVideoFrameCallback === 'function') {
        ui.video.requestVideoFrameCallback(() => done('requestVideoFrameCallback'));
      }
      // Fallback (and for hidden tabs, where frame callbacks may not run): getStats.
    }

    // ---- data channel ----

    attachDataChannel(dc) {
      this.dc = dc;
      hook.dataChannel = dc;
      dc.binaryType = 'arraybuffer';
      const setDcState = () => {
        ui.dcState.textContent = dc.readyState;
        ui.dcState.className = 'tag' + (dc.readyState === 'open' ? ' tag-ok' : '');
        const open = dc.readyState === 'open';
        ui.dcInput.disabled = !open;
        ui.dcSend.disabled = !open;
      };
      dc.onopen = setDcState;
      dc.onclose = setDcState;
      dc.onmessage = (ev) => this.onDataMessage(ev.data);
      setDcState();
    }

    sendData(data) {
      if (!this.dc || this.dc.readyState !== 'open') throw new Error(`data channel is ${this.dc ? this.dc.readyState : 'not created'}`);
      const binary = typeof data !== 'string';
      const bytes = binary ? new Uint8Array(data instanceof ArrayBuffer ? data : data.buffer.slice(data.byteOffset, data.byteOffset + data.byteLength)) : null;
      const key = binary ? 'b:' + bytesKey(bytes) : 't:' + data;
      const sentAt = performance.now();
      const entry = { key, sentAt };
      this.pendingEchoes.push(entry);
      if (this.pendingEchoes.length > 1000) this.pendingEchoes.shift();
      this.dc.send(binary ? bytes : data);
      log('sent', binary ? `${bytes.length} bytes` : data);
      return new Promise((resolve) => this.echoWaiters.push({ entry, resolve }));
    }

    onDataMessage(data) {
      const binary = typeof data !== 'string';
      const bytes = binary ? new Uint8Array(data) : null;
      const key = binary ? 'b:' + bytesKey(bytes) : 't:' + data;
      const idx = this.pendingEchoes.findIndex((p) => p.key === key);
      let rttMs = null;
      let entry = null;
      if (idx >= 0) {
        entry = this.pendingEchoes.splice(idx, 1)[0];
        rttMs = Math.round((performance.now() - entry.sentAt) * 10) / 10;
      }
      const echo = binary ? { binary: true, bytes: Array.from(bytes), rttMs } : { binary: false, text: data, rttMs };
      hook.lastEcho = echo;
      log('echo', (binary ? `${bytes.length} bytes` : data), rttMs);
      const w = this.echoWaiters.findIndex((x) => x.entry === entry);
      if (w >= 0) this.echoWaiters.splice(w, 1)[0].resolve(echo);
    }

    // ---- stats ----

    async updateStats() {
      if (!this.pc || this.closed) return;
      const report = await this.pc.getStats();
      const s = {
        connectionState: this.pc.connectionState,
        width: null,
        height: null,
        fps: null,
        bitrateBps: null,
        rttMs: null,
        packetsLost: 0,
        framesDecoded: 0,
        videoCodec: null,
        audioPacketsReceived: 0,
        timeToFirstFrameMs: hook.timeToFirstFrameMs,
      };
      let selectedPairId = null;
      const pairs = [];
      report.forEach((r) => {
        if (r.type === 'inbound-rtp' && r.kind === 'video') {
          s.width = r.frameWidth ?? null;
          s.height = r.frameHeight ?? null;
          s.fps = r.framesPerSecond ?? null;
          s.framesDecoded = r.framesDecoded || 0;
          s.packetsLost += r.packetsLost || 0;
          if (this.prevVideo && r.bytesReceived != null && r.timestamp > this.prevVideo.timestamp) {
            s.bitrateBps = ((r.bytesReceived - this.prevVideo.bytesReceived) * 8 * 1000) / (r.timestamp - this.prevVideo.timestamp);
          }
          this.prevVideo = { bytesReceived: r.bytesReceived || 0, timestamp: r.timestamp };
          if (r.codecId) {
            const c = report.get(r.codecId);
            if (c) s.videoCodec = c.mimeType.replace(/^video\//, '');
          }
        } else if (r.type === 'inbound-rtp' && r.kind === 'audio') {
          s.audioPacketsReceived = r.packetsReceived || 0;
          s.packetsLost += r.packetsLost || 0;
        } else if (r.type === 'transport' && r.selectedCandidatePairId) {
          selectedPairId = r.selectedCandidatePairId;
        } else if (r.type === 'candidate-pair') {
          pairs.push(r);
        }
      });
      const pair = (selectedPairId && report.get(selectedPairId)) || pairs.find((p) => p.nominated && p.state === 'succeeded');
      if (pair && pair.currentRoundTripTime != null) s.rttMs = Math.round(pair.currentRoundTripTime * 1000 * 10) / 10;
      if (s.framesDecoded > 0 && this.markFirstFrame) this.markFirstFrame('getStats');
      s.timeToFirstFrameMs = hook.timeToFirstFrameMs;
      hook.latestStats = s;
      renderStats(s);
    }

    close(keepState) {
      if (this.closed) return;
      this.closed = true;
      clearInterval(this.statsTimer);
      clearTimeout(this.answerTimer);
      if (this.ws) {
        this.ws.onclose = null;
        try {
          this.ws.close();
        } catch (e) {
          /* already closed */
        }
      }
      if (this.pc) this.pc.close();
      if (this.micTrack) this.micTrack.stop();
      this.micTrack = null;
      if (this.cameraStream) this.cameraStream.getTracks().forEach((t) => t.stop());
      this.cameraStream = null;
      hook.sendingCamera = false;
      setTalking(false);
      ui.talk.disabled = true;
      ui.dcInput.disabled = true;
      ui.dcSend.disabled = true;
      ui.dcState.textContent = 'closed';
      ui.dcState.className = 'tag';
      if (!keepState && !['refused', 'failed', 'signaling-error'].includes(hook.state)) setState('closed');
    }
  }

  function bytesKey(bytes) {
    let out = '';
    for (let i = 0; i < bytes.length; i++) out += bytes[i].toString(16).padStart(2, '0');
    return out;
  }

  /** Put H.264 first (packetization-mode=1 before 0), keep the rest as fallbacks. */
  function preferH264(transceiver) {
    if (typeof transceiver.setCodecPreferences !== 'function' || !window.RTCRtpReceiver || !RTCRtpReceiver.getCapabilities) return;
    const caps = RTCRtpReceiver.getCapabilities('video');
    if (!caps) return;
    const rank = (c) => {
      if (c.mimeType.toLowerCase() !== 'video/h264') return 3;
      const fmtp = c.sdpFmtpLine || '';
      if (fmtp.includes('packetization-mode=1')) return fmtp.includes('profile-level-id=42e01f') ? 0 : 1;
      return 2;
    };
    const sorted = caps.codecs.slice().sort((a, b) => rank(a) - rank(b));
    if (sorted.length && rank(sorted[0]) < 3) {
      try {
        transceiver.setCodecPreferences(sorted);
      } catch (e) {
        console.warn('could not prefer H.264', e);
      }
    }
  }

  function renderStats(s) {
    ui.stat.connection.textContent = s.connectionState;
    ui.stat.resolution.textContent = s.width && s.height ? `${s.width} × ${s.height}` : '–';
    ui.stat.fps.textContent = s.fps != null ? `${Math.round(s.fps)} fps` : '–';
    ui.stat.bitrate.textContent = formatBitrate(s.bitrateBps);
    ui.stat.rtt.textContent = s.rttMs != null ? `${s.rttMs} ms` : '–';
    ui.stat.lost.textContent = String(s.packetsLost);
    ui.stat.ttff.textContent = s.timeToFirstFrameMs != null ? `${s.timeToFirstFrameMs} ms` : '–';
    ui.stat.codec.textContent = s.videoCodec || '–';
    ui.stat.audio.textContent = String(s.audioPacketsReceived);
    ui.stat.frames.textContent = String(s.framesDecoded);
  }

  function log(direction, text, rttMs) {
    const li = document.createElement('li');
    li.className = 'dc-' + direction;
    const time = document.createElement('time');
    time.textContent = new Date().toLocaleTimeString();
    const dir = document.createElement('span');
    dir.className = 'dir';
    dir.textContent = direction === 'sent' ? '→ sent' : '← echo';
    const body = document.createElement('span');
    body.className = 'msg';
    body.textContent = text; // textContent: echoed data is never parsed as HTML
    li.append(time, dir, body);
    if (rttMs != null) {
      const rtt = document.createElement('span');
      rtt.className = 'rtt';
      rtt.textContent = `${rttMs} ms`;
      li.append(rtt);
    }
    ui.dcLog.prepend(li);
    while (ui.dcLog.children.length > MAX_LOG_ENTRIES) ui.dcLog.lastElementChild.remove();
  }

  function resetView() {
    hideBanner();
    hook.timeToFirstFrameMs = null;
    hook.firstFrameVia = null;
    hook.lastEcho = null;
    hook.error = null;
    hook.latestStats = null;
    ui.overlay.hidden = false;
    ui.overlay.classList.remove('stopped');
    ui.overlayText.textContent = 'Connecting to the device…';
    ui.video.srcObject = null;
    ui.unmute.disabled = true;
    renderStats({ connectionState: '–', packetsLost: '–', audioPacketsReceived: '–', framesDecoded: '–' });
  }

  async function loadConfig() {
    setState('loading-config');
    let res;
    try {
      // The page token (needed when the page is served beyond loopback) goes along.
      const token = new URLSearchParams(location.search).get('token');
      const path = token ? `/config.json?token=${encodeURIComponent(token)}` : '/config.json';
      res = await fetch(path, { cache: 'no-store' });
    } catch (e) {
      throw new Error(`could not fetch /config.json (${e.message}). Is kvs-webrtc still running?`);
    }
    if (!res.ok) throw new Error(`/config.json answered HTTP ${res.status}`);
    const config = await res.json();
    if (!config || typeof config !== 'object' || !config.channelArn) throw new Error('/config.json names no channelArn');
    return config;
  }

  async function connect() {
    if (session) session.close();
    session = null;
    resetView();
    setState('idle');
    let config;
    try {
      config = await loadConfig();
    } catch (e) {
      fail('signaling-error', 'No configuration', e.message);
      return;
    }
    hook.config = config;
    ui.channelName.textContent = config.channelName || config.channelArn;
    ui.channelName.title = config.channelArn;
    session = new Session(config);
    session.start();
  }

  // ---- controls -----------------------------------------------------------------------------

  ui.unmute.addEventListener('click', () => {
    ui.video.muted = !ui.video.muted;
    $('unmute-label').textContent = ui.video.muted ? 'Unmute' : 'Mute';
    // Crossed-out speaker while muted, sound waves while playing.
    $('sound-waves').setAttribute('d', ui.video.muted ? 'M16 9l5 6M21 9l-5 6' : 'M16 8.5a5 5 0 0 1 0 7M18.5 6a8.5 8.5 0 0 1 0 12');
    ui.video.play().catch(() => {});
  });
  ui.reconnect.addEventListener('click', () => connect());
  ui.camera.checked = new URLSearchParams(location.search).get('camera') === '1';
  ui.camera.addEventListener('change', () => connect());

  // Push-to-talk: held with the mouse, finger or pen; Space/Enter toggles it (keyboard users
  // cannot hold a button comfortably).
  function setTalking(on) {
    ui.talk.classList.toggle('talking', on);
    ui.talk.setAttribute('aria-pressed', on ? 'true' : 'false');
    ui.talkLabel.textContent = on ? 'Talking…' : 'Hold to talk';
  }
  let talkWanted = false;
  async function talk(on) {
    talkWanted = on;
    setTalking(on);
    if (!session) return false;
    try {
      const talking = await session.talk(on);
      // A release that came while the microphone was being opened wins.
      if (talkWanted !== on) await session.talk(talkWanted);
      return talking;
    } catch (e) {
      setTalking(false);
      talkWanted = false;
      showBanner('warn', 'Microphone', `No microphone for push-to-talk: ${e.message || e}`);
      return false;
    }
  }
  ui.talk.addEventListener('pointerdown', (ev) => {
    ev.preventDefault();
    if (ui.talk.setPointerCapture) ui.talk.setPointerCapture(ev.pointerId);
    talk(true);
  });
  for (const type of ['pointerup', 'pointercancel']) ui.talk.addEventListener(type, () => talkWanted && talk(false));
  ui.talk.addEventListener('keydown', (ev) => {
    if (ev.key !== ' ' && ev.key !== 'Enter') return;
    ev.preventDefault();
    if (!ev.repeat) talk(!talkWanted);
  });
  ui.dcForm.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const text = ui.dcInput.value;
    if (!text || !session) return;
    try {
      session.sendData(text);
      ui.dcInput.value = '';
    } catch (e) {
      showBanner('warn', 'Data channel', e.message);
    }
  });
  window.addEventListener('beforeunload', () => session && session.close());

  // ---- test hook ----------------------------------------------------------------------------

  Object.assign(hook, {
    /** The latest stats snapshot (refreshed every second), or null before the first. */
    stats: () => hook.latestStats,
    /** Send text (or a Uint8Array/ArrayBuffer); resolves with the echo {text|bytes, rttMs}. */
    sendData: (data) => {
      if (!session) return Promise.reject(new Error('no session'));
      try {
        return session.sendData(data);
      } catch (e) {
        return Promise.reject(e);
      }
    },
    reconnect: () => connect(),
    /** Push-to-talk on (true) or off (false), as the button does; resolves with whether the
     * microphone is now on. */
    talk: (on) => talk(Boolean(on)),
  });
  window.kvsViewer = hook;

  connect();
})();
