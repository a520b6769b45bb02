// A relay-only WebRTC call between two peer connections, through the TURN
// server of iceServers: a data channel carries `count` messages; `report`
// gets the result (candidates, messages received, the selected pair's
// candidate types, an error).  Shared by the page Chromium opens
// (webrtc_relay.html) and the Node client (webrtc_relay.js).
"use strict";

function relayCall(RTCPeerConnection, iceServers, count, report) {
  const result = {candidates: [], received: 0, sent: 0, pair: null, state: "", error: ""};
  const config = {iceServers, iceTransportPolicy: "relay"};
  const a = new RTCPeerConnection(config);
  const b = new RTCPeerConnection(config);
  let done = false;
  function finish() {
    if (!done) {
      done = true;
      report(result, [a, b]);
    }
  }
  for (const [pc, other] of [[a, b], [b, a]]) {
    pc.onicecandidate = (e) => {
      if (e.candidate && e.candidate.candidate) {
        result.candidates.push(e.candidate.candidate);
        other.addIceCandidate(e.candidate).catch(() => {});
      }
    };
  }
  a.onconnectionstatechange = () => { result.state = a.connectionState; };
  const channel = a.createDataChannel("relay", {ordered: true});
  b.ondatachannel = (e) => {
    e.channel.onmessage = () => {
      result.received += 1;
      if (result.received === count) {
        a.getStats().then((stats) => {
          // The pair the transport uses ("nominated" may lag), or else
          // the succeeded, nominated one.
          stats.forEach((s) => {
            const id = s.type === "transport" ? s.selectedCandidatePairId
              : s.type === "candidate-pair" && s.state === "succeeded" && s.nominated ? s.id
                : null;
            const pair = id && stats.get(id);
            if (pair && !result.pair) {
              result.pair = [stats.get(pair.localCandidateId).candidateType,
                             stats.get(pair.remoteCandidateId).candidateType];
            }
          });
          finish();
        });
      }
    };
  };
  channel.onopen = () => {
    for (let i = 0; i < count; i++) {
      channel.send("message " + i + " " + "x".repeat(100));
      result.sent += 1;
    }
  };
  (async () => {
    const offer = await a.createOffer();
    await a.setLocalDescription(offer);
    await b.setRemoteDescription(offer);
    const answer = await b.createAnswer();
    await b.setLocalDescription(answer);
    await a.setRemoteDescription(answer);
  })().catch((e) => { result.error = String(e); finish(); });
  setTimeout(() => { result.error = result.error || "timeout"; finish(); }, 20000);
}

if (typeof module !== "undefined") {
  module.exports = {relayCall};
}
