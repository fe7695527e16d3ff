// A pier plugin in JavaScript: replies `Echo: ` + each frame.
//
// Frames arrive as Uint8Array and the reply is built from bytes, so any UTF-8 (or binary) frame
// comes back exactly as it was sent. Connection ids are BigInts (WIT u64). Build with
// `./build.sh`, serve with `pier serve examples/js-echo/echo.wasm --framing lines`.

import { log } from "pier:plugin/log@0.1.0";

const PREFIX = new TextEncoder().encode("Echo: ");

// pier calls these for every connection event (see wit/plugin.wit, interface handler).
export const handler = {
  // No greeting. Throwing { reason, message } would turn the client away.
  onOpen(peer) {
    return undefined;
  },

  onFrame(id, frame) {
    const reply = new Uint8Array(PREFIX.length + frame.length);
    reply.set(PREFIX, 0);
    reply.set(frame, PREFIX.length);
    return reply;
  },

  onClose(id, reason) {
    if (id !== 0n) {
      // 0 is pier's load-time start-up check, not a client.
      log("debug", `connection ${id} closed: ${reason}`);
    }
  },
};
