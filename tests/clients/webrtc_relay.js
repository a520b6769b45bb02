// The relay-only call of relay_call.js from libwebrtc in Node
// (@roamhq/wrtc, Google's WebRTC library as a Node addon).  Prints one
// line "RESULT {...}".
// usage: node webrtc_relay.js TURN_URL USER PASSWORD COUNT
"use strict";

const {RTCPeerConnection} = require("@roamhq/wrtc");
const {relayCall} = require("./relay_call.js");

const [turn, username, credential, count] = process.argv.slice(2);
relayCall(RTCPeerConnection, [{urls: [turn], username, credential}], Number(count || "20"),
  (result, connections) => {
    process.stdout.write("RESULT " + JSON.stringify(result) + "\n");
    for (const pc of connections) {
      pc.close();
    }
    setTimeout(() => process.exit(0), 100);
  });
