// ivr-bridge softphone: one WebRTC call to the bridge (POST /phone/offer), a keypad and the live
// transcript (data channel "phone"). Vanilla JS, no build step, nothing loaded from elsewhere.
// `window.softphone` exposes the call's state, transcript, events, audio levels, a recording of what
// the page heard and its inbound RTP counters, for tests and benchmarks (bench/softphone.py,
// tests/web/test_phone_browser.py, tests/web/test_phone_firefox.py).
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const KEYS = ["1", "2", "3", "4", "5", "6", "7", "8", "9", "*", "0", "#"];
  const METER_MS = 10;

  const state = {
    status: "idle", // idle | calling | connected | ended
    callId: null,
    transcript: [], // {who: "bot"|"caller", text, source, t_ms}
    events: [], // every event the bridge sent
    levels: [], // [t_ms (page clock), local rms, remote rms] while in a call
    endedReason: null,
  };
  let pc = null;
  let channel = null;
  let localStream = null;
  let recorder = null;
  let chunks = [];
  let audioCtx = null;
  let meterTimer = null;
  let callT0 = 0;

  function setStatus(text) {
    $("status").textContent = text;
  }

  function addEventLine(text, t) {
    const li = document.createElement("li");
    li.dataset.t = (t / 1000).toFixed(1) + " s";
    li.textContent = text;
    $("events").appendChild(li);
    li.scrollIntoView({ block: "nearest" });
  }

  function addTranscript(who, text) {
    const li = document.createElement("li");
    li.className = who;
    const label = document.createElement("span");
    label.className = "who";
    label.textContent = who === "bot" ? "Bot:" : "You:";
    li.appendChild(label);
    li.appendChild(document.createTextNode(text));
    $("transcript").appendChild(li);
    li.scrollIntoView({ block: "nearest" });
  }

  function onBridgeEvent(event) {
    state.events.push(event);
    const t = event.t_ms || 0;
    switch (event.type) {
      case "call":
        addEventLine("call " + event.call_id + " to " + event.number + (event.flow ? " (flow " + event.flow + ")" : ""), t);
        break;
      case "transcript":
        state.transcript.push(event);
        addTranscript(event.who, event.text);
        break;
      case "step":
        addEventLine("step " + event.flow + "[" + event.index + "] " + event.kind, t);
        break;
      case "key":
        addEventLine("key " + event.digit, t);
        break;
      case "barge_in":
        addEventLine("barge-in (" + event.source + ")", t);
        break;
      case "transfer":
        addEventLine("transfer to " + event.target + " (a browser call ends here)", t);
        break;
      case "ended":
        state.endedReason = event.reason;
        addEventLine("ended: " + event.reason, t);
        break;
      case "hangup":
        finish("The bridge hung up.");
        break;
    }
  }

  function rms(analyser, buffer) {
    analyser.getFloatTimeDomainData(buffer);
    let sum = 0;
    for (let i = 0; i < buffer.length; i++) sum += buffer[i] * buffer[i];
    return Math.sqrt(sum / buffer.length);
  }

  function startMeters(remoteStream) {
    audioCtx = audioCtx || new AudioContext();
    const local = audioCtx.createAnalyser();
    const remote = audioCtx.createAnalyser();
    local.fftSize = remote.fftSize = 512;
    audioCtx.createMediaStreamSource(localStream).connect(local);
    audioCtx.createMediaStreamSource(remoteStream).connect(remote);
    const a = new Float32Array(local.fftSize);
    const b = new Float32Array(remote.fftSize);
    meterTimer = setInterval(() => {
      if (state.levels.length < 200000) {
        state.levels.push([Math.round(performance.now() - callT0), rms(local, a), rms(remote, b)]);
      }
    }, METER_MS);
  }

  function startRecording(remoteStream) {
    const types = ["audio/webm;codecs=opus", "audio/ogg;codecs=opus", "audio/webm"];
    const mimeType = types.find((t) => window.MediaRecorder && MediaRecorder.isTypeSupported(t));
    if (!mimeType) return;
    chunks = [];
    recorder = new MediaRecorder(remoteStream, { mimeType });
    recorder.ondataavailable = (e) => {
      if (e.data && e.data.size) chunks.push(e.data);
    };
    recorder.start(500);
  }

  function recording() {
    // A promise of {mimeType, base64} of everything heard so far (stops the recorder).
    return new Promise((resolve) => {
      const done = () => {
        const blob = new Blob(chunks, { type: recorder ? recorder.mimeType : "" });
        const reader = new FileReader();
        reader.onload = () => resolve({ mimeType: blob.type, base64: String(reader.result).split(",")[1] || "" });
        reader.readAsDataURL(blob);
      };
      if (recorder && recorder.state !== "inactive") {
        recorder.onstop = done;
        recorder.stop();
      } else {
        done();
      }
    });
  }

  async function audioStats() {
    // The call's audio RTP counters, both ways ({packetsReceived, bytesReceived, packetsLost, jitter,
    // packetsSent, bytesSent}), or null outside a call.
    if (!pc) return null;
    const out = {};
    for (const s of (await pc.getStats()).values()) {
      if ((s.kind || s.mediaType) !== "audio") continue;
      if (s.type === "inbound-rtp") {
        Object.assign(out, { packetsReceived: s.packetsReceived, bytesReceived: s.bytesReceived });
        Object.assign(out, { packetsLost: s.packetsLost, jitter: s.jitter });
      } else if (s.type === "outbound-rtp") {
        Object.assign(out, { packetsSent: s.packetsSent, bytesSent: s.bytesSent });
      }
    }
    return out;
  }

  function waitForCandidates(peer, timeoutMs) {
    if (peer.iceGatheringState === "complete") return Promise.resolve();
    return new Promise((resolve) => {
      const timer = setTimeout(resolve, timeoutMs);
      peer.addEventListener("icegatheringstatechange", () => {
        if (peer.iceGatheringState === "complete") {
          clearTimeout(timer);
          resolve();
        }
      });
    });
  }

  async function call() {
    if (pc) return;
    $("call").disabled = true;
    $("transcript").textContent = "";
    $("events").textContent = "";
    Object.assign(state, { status: "calling", callId: null, transcript: [], events: [], levels: [], endedReason: null });
    setStatus("Asking for the microphone…");
    try {
      localStream = await navigator.mediaDevices.getUserMedia({
        audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true },
        video: false,
      });
      callT0 = performance.now();
      pc = new RTCPeerConnection({ iceServers: [] });
      localStream.getTracks().forEach((track) => pc.addTrack(track, localStream));
      channel = pc.createDataChannel("phone");
      channel.onmessage = (e) => {
        try {
          onBridgeEvent(JSON.parse(e.data));
        } catch (err) {
          console.warn("bad event", err);
        }
      };
      pc.ontrack = (e) => {
        const stream = e.streams[0] || new MediaStream([e.track]);
        $("remote").srcObject = stream;
        startRecording(stream);
        startMeters(stream);
      };
      pc.onconnectionstatechange = () => {
        if (!pc) return;
        if (pc.connectionState === "connected") {
          state.status = "connected";
          setStatus("Connected.");
          $("hangup").disabled = false;
        } else if (pc.connectionState === "failed") {
          finish("The connection failed.");
        }
      };
      setStatus("Calling…");
      await pc.setLocalDescription(await pc.createOffer());
      await waitForCandidates(pc, 3000);
      const response = await fetch("/phone/offer", {
        method: "POST",
        credentials: "same-origin",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({
          type: "offer",
          sdp: pc.localDescription.sdp,
          number: $("number").value || "default",
          flow: $("flow").value || null,
        }),
      });
      if (!response.ok) {
        const detail = await response.text();
        throw new Error("the bridge refused the call (" + response.status + "): " + detail);
      }
      const answer = await response.json();
      state.callId = answer.call_id;
      await pc.setRemoteDescription({ type: "answer", sdp: answer.sdp });
    } catch (err) {
      finish(String(err.message || err));
    }
  }

  function finish(message) {
    if (channel && channel.readyState === "open") {
      try {
        channel.send(JSON.stringify({ type: "hangup" }));
      } catch (err) {
        /* closing anyway */
      }
    }
    if (meterTimer) clearInterval(meterTimer);
    meterTimer = null;
    if (recorder && recorder.state !== "inactive") recorder.requestData();
    const peer = pc;
    pc = null;
    channel = null;
    if (peer) setTimeout(() => peer.close(), 200); // let the hang-up message go out
    if (localStream) localStream.getTracks().forEach((t) => t.stop());
    localStream = null;
    state.status = "ended";
    setStatus(message);
    $("call").disabled = false;
    $("hangup").disabled = true;
  }

  function press(digit, button) {
    if (!channel || channel.readyState !== "open") return;
    channel.send(JSON.stringify({ type: "dtmf", digit }));
    if (button) {
      button.classList.add("pressed");
      setTimeout(() => button.classList.remove("pressed"), 150);
    }
  }

  async function loadConfig() {
    const response = await fetch("/phone/config", { credentials: "same-origin" });
    if (!response.ok) {
      setStatus("Not signed in: open the link with ?token=… that the bridge printed.");
      $("call").disabled = true;
      return;
    }
    const config = await response.json();
    for (const number of config.numbers) {
      const option = document.createElement("option");
      option.value = option.textContent = number;
      $("number").appendChild(option);
    }
    if (config.numbers.includes("default")) $("number").value = "default";
    for (const flow of config.flows) {
      const option = document.createElement("option");
      option.value = option.textContent = flow;
      $("flow").appendChild(option);
    }
  }

  for (const key of KEYS) {
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = key;
    button.dataset.digit = key;
    button.addEventListener("click", () => press(key, button));
    $("keypad").appendChild(button);
  }
  document.addEventListener("keydown", (e) => {
    if (KEYS.includes(e.key) && !(e.target instanceof HTMLSelectElement)) press(e.key, null);
  });
  $("call").addEventListener("click", call);
  $("hangup").addEventListener("click", () => finish("You hung up."));
  window.softphone = { state, recording, audioStats, call, hangUp: () => finish("You hung up."), press };
  loadConfig();
})();
