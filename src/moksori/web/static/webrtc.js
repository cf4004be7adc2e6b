// The OpenAI Realtime API over WebRTC, as a browser client does it:
//   1. the page's server side mints an ephemeral key (POST /session, same origin);
//   2. an RTCPeerConnection with one audio transceiver (the microphone, Opus) and the
//      "oai-events" data channel, created before the offer;
//   3. the offer is POSTed to /v1/realtime/calls with "Authorization: Bearer ek_..." and the
//      201 answer applied. Reply audio arrives on the remote track; events are JSON on the channel.
// Same surface as RealtimeClient (connect/send/close/open) so the app can fall back to it.

const GATHER_MS = 2000; // host candidates are ready at once; never wait longer than this
const OPEN_MS = 10000; // offer posted -> data channel open

export class WebRTCClient {
  /** handlers: {onEvent(ev), onClose({code, reason, wasOpen}), onRemoteStream(stream)} */
  constructor(handlers) {
    this.handlers = handlers;
    this.pc = null;
    this.channel = null;
    this.sender = null;
    this.open = false;
    this.closing = false;
    this.callId = null;
  }

  /** Mint a key, negotiate, resolve once "oai-events" is open; reject (and clean up) on failure. */
  async connect({ key = "", session = null, micTrack = null, fail = false, params = "" } = {}) {
    this.closing = false;
    const minted = await fetch("/session", {
      method: "POST",
      headers: { "Content-Type": "application/json", ...(key ? { Authorization: `Bearer ${key}` } : {}) },
      body: JSON.stringify(session ? { session } : {}),
    });
    if (!minted.ok) throw new Error(`cannot get a session key (${minted.status}${await errorText(minted)})`);
    const ek = (await minted.json()).value;

    const pc = new RTCPeerConnection();
    this.pc = pc;
    const transceiver = pc.addTransceiver("audio", { direction: "sendrecv" });
    this.sender = transceiver.sender;
    if (micTrack) await this.sender.replaceTrack(micTrack);
    pc.ontrack = (e) => {
      const stream = e.streams && e.streams[0] ? e.streams[0] : new MediaStream([e.track]);
      this.handlers.onRemoteStream(stream);
    };
    const channel = pc.createDataChannel("oai-events");
    this.channel = channel;
    channel.onmessage = (m) => {
      if (typeof m.data !== "string") return;
      let ev;
      try {
        ev = JSON.parse(m.data);
      } catch {
        return;
      }
      this.handlers.onEvent(ev);
    };
    const opened = new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error("the data channel did not open")), OPEN_MS);
      channel.onopen = () => {
        clearTimeout(timer);
        resolve();
      };
      pc.onconnectionstatechange = () => {
        const s = pc.connectionState;
        if (s === "failed" || s === "closed") {
          clearTimeout(timer);
          reject(new Error(`the connection ${s}`));
          this.lost(s);
        }
      };
    });
    channel.onclose = () => this.lost("data channel closed");

    await pc.setLocalDescription(await pc.createOffer());
    await gathered(pc);
    const sdp = fail ? "v=0\r\nthis is not an offer\r\n" : pc.localDescription.sdp;
    const answer = await fetch(`/v1/realtime/calls?moksori_timeline=1${params}`, {
      method: "POST",
      headers: { "Content-Type": "application/sdp", Authorization: `Bearer ${ek}` },
      body: sdp,
    });
    if (answer.status !== 201) throw new Error(`the server refused the offer (${answer.status}${await errorText(answer)})`);
    this.callId = (answer.headers.get("Location") || "").split("/").pop() || null;
    await pc.setRemoteDescription({ type: "answer", sdp: await answer.text() });
    await opened;
    this.open = true;
  }

  /** Start sending the microphone (no renegotiation: the transceiver was offered sendrecv). */
  async setMic(track) {
    if (this.sender) await this.sender.replaceTrack(track);
  }

  lost(reason) {
    const wasOpen = this.open;
    this.open = false;
    if (wasOpen && !this.closing) this.handlers.onClose({ code: 1006, reason, wasOpen });
  }

  send(event) {
    if (!this.channel || !this.open || this.channel.readyState !== "open") return false;
    this.channel.send(JSON.stringify(event));
    return true;
  }

  get bufferedAmount() {
    return this.channel ? this.channel.bufferedAmount : 0;
  }

  close() {
    this.closing = true;
    this.open = false;
    const pc = this.pc;
    this.pc = null;
    this.channel = null;
    this.sender = null;
    if (pc) {
      try {
        pc.close();
      } catch {
        /* already closed */
      }
    }
  }
}

function gathered(pc) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, GATHER_MS);
    pc.addEventListener("icegatheringstatechange", () => {
      if (pc.iceGatheringState === "complete") {
        clearTimeout(timer);
        resolve();
      }
    });
  });
}

async function errorText(resp) {
  try {
    const body = await resp.json();
    return body && body.error && body.error.message ? `: ${body.error.message}` : "";
  } catch {
    return "";
  }
}
