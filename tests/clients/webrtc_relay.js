// A relay-only WebRTC call between two peer connections in one Node
// process, through libwebrtc (@roamhq/wrtc, Google's WebRTC library as a
// Node addon), the way tests/clients/webrtc_relay.html does it in
// Chromium.  Prints one line "RESULT {...}".
// usage: node webrtc_relay.js TURN_URL USER PASSWORD COUNT
"use strict";

const {RTCPeerConnection} = require("@roamhq/wrtc");

const [turn, username, credential, countText] = process.argv.slice(2);
const count = Number(countText || "20");
const config = {iceServers: [{urls: [turn], username, credential}], iceTransportPolicy: "relay"};
const result = {candidates: [], received: 0, sent: 0, pair: null, error: ""};
let a;
let b;

function report() {
  process.stdout.write("RESULT " + JSON.stringify(result) + "\n");
  for (const pc of [a, b]) {
    if (pc) {
      pc.close();
    }
  }
  setTimeout(() => process.exit(0), 100);
}

async function run() {
  a = new RTCPeerConnection(config);
  b = new RTCPeerConnection(config);
  for (const [pc, other] of [[a, b], [b, a]]) {
    pc.onicecandidate = (e) => {
      if (e.candidate && e.candidate.candidate) {
        result.candidates.push(e.candidate.candidate);
        other.addIceCandidate(e.candidate).catch(() => {});
      }
    };
  }
  const channel = a.createDataChannel("relay", {ordered: true});
  b.ondatachannel = (e) => {
    e.channel.onmessage = () => {
      result.received += 1;
      if (result.received === count) {
        a.getStats().then((stats) => {
          stats.forEach((s) => {
            if (s.type === "candidate-pair" && s.state === "succeeded" && s.nominated) {
              const local = stats.get(s.localCandidateId);
              const remote = stats.get(s.remoteCandidateId);
              result.pair = [local.candidateType, remote.candidateType];
            }
          });
          report();
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
  const offer = await a.createOffer();
  await a.setLocalDescription(offer);
  await b.setRemoteDescription(offer);
  const answer = await b.createAnswer();
  await b.setLocalDescription(answer);
  await a.setRemoteDescription(answer);
  setTimeout(() => {
    result.error = "timeout";
    report();
  }, 20000);
}

run().catch((e) => {
  result.error = String(e);
  report();
});
