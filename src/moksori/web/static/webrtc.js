// The OpenAI Realtime API over WebRTC, as a browser client does it:
//   1. the page's server side mints an ephemeral key (POST /session, same origin), and gives the
//      STUN/TURN servers to use with it (`ice_servers`, MOKSORI_WEBRTC_ICE_SERVERS; TURN
//      credentials are time-limited when the server has MOKSORI_WEBRTC_TURN_SECRET);
//   2. an RTCPeerConnection with those servers, one audio transceiver (the microphone, Opus) and
//      the "oai-events" data channel, created before the offer;
//   3. the offer is POSTed to /v1/realtime/calls with "Authorization: Bearer ek_..." and the
//      201 answer applied. Reply audio arrives on the remote track; events are JSON on the channel.
// Same surface as RealtimeClient (connect/send/close/open) so the app can fall back to it.

import { serverEvent, utf8Length } from "./realtime.js";

const GATHER_MS = 2000; // host candidates are ready at once, STUN/TURN ones in a round trip or two
const MAX_ICE_ERRORS = 4; // STUN/TURN failures kept to explain a connection that fails
const OPEN_MS = 10000; // offer posted -> data channel open
const HANGUP_MS = 3000; // an unjoined call's peer connection is closed after its hangup, or this long

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
    this.attempt = 0; // connect() and close() move it on: an older connect() gives up
    this.cancelWait = null; // ends the current connect()'s wait for the data channel
  }

  /** Mint a key, negotiate, resolve once "oai-events" is open; reject (and clean up) on failure.
   *  close(), another connect() or `signal` aborting cancel it: it then rejects with an AbortError
   *  and closes whatever it opened (and hangs up a call the server already answered). */
  async connect({ key = "", session = null, micTrack = null, fail = false, params = "", signal = null } = {}) {
    this.close();
    const attempt = ++this.attempt;
    this.closing = false;
    const cancelled = () => attempt !== this.attempt || (signal !== null && signal.aborted);
    const check = () => {
      if (cancelled()) throw abortError();
    };
    let pc = null;
    let timer = 0;
    let callId = null;
    let onAbort = null;
    try {
      check();
      const minted = await fetch("/session", {
        method: "POST",
        headers: { "Content-Type": "application/json", ...(key ? { Authorization: `Bearer ${key}` } : {}) },
        body: JSON.stringify(session ? { session } : {}),
      });
      check();
      if (!minted.ok) throw new Error(`cannot get a session key (${minted.status}${await errorText(minted)})`);
      const grant = await minted.json();
      const ek = grant.value;
      check();

      pc = new RTCPeerConnection({ iceServers: Array.isArray(grant.ice_servers) ? grant.ice_servers : [] });
      this.pc = pc;
      // a TURN server that refuses its credentials (401) or cannot be reached (701) says so here;
      // without a relay a peer behind NAT never connects, and the error then says why
      const iceErrors = [];
      pc.onicecandidateerror = (e) => {
        const said = `${e.url || "?"}: ${e.errorCode}${e.errorText ? " " + e.errorText : ""}`;
        if (e.url && iceErrors.length < MAX_ICE_ERRORS && !iceErrors.includes(said)) iceErrors.push(said);
      };
      const why = () => (iceErrors.length ? ` (STUN/TURN: ${iceErrors.join("; ")})` : "");
      const transceiver = pc.addTransceiver("audio", { direction: "sendrecv" });
      this.sender = transceiver.sender;
      if (micTrack) await this.sender.replaceTrack(micTrack);
      check();
      pc.ontrack = (e) => {
        if (this.pc !== pc) return;
        const stream = e.streams && e.streams[0] ? e.streams[0] : new MediaStream([e.track]);
        this.handlers.onRemoteStream(stream);
      };
      const channel = pc.createDataChannel("oai-events");
      this.channel = channel;
      channel.onmessage = (m) => {
        if (this.pc !== pc) return;
        const ev = serverEvent(m.data);
        if (ev) this.handlers.onEvent(ev);
      };
      // settled by the channel opening, the connection failing, the 10 s timer (started once the
      // offer is answered) or a cancel; awaited only at the end, so it must never reject unheard
      let failWait = null;
      const opened = new Promise((resolve, reject) => {
        failWait = reject;
        channel.onopen = () => resolve();
        pc.onconnectionstatechange = () => {
          const s = pc.connectionState;
          if (s === "failed" || s === "closed") {
            reject(new Error(`the connection ${s}${why()}`));
            if (this.pc === pc) this.lost(s);
          }
        };
      });
      opened.catch(() => {});
      this.cancelWait = () => failWait(abortError());
      if (signal) {
        onAbort = () => failWait(abortError());
        signal.addEventListener("abort", onAbort);
      }
      channel.onclose = () => {
        if (this.pc === pc) this.lost("data channel closed");
      };

      await pc.setLocalDescription(await pc.createOffer());
      check();
      await gathered(pc);
      check();
      const sdp = fail ? "v=0\r\nthis is not an offer\r\n" : pc.localDescription.sdp;
      // not cancelled midway: once posted, the server may hold a call; we learn its id from the answer
      const answer = await fetch(`/v1/realtime/calls?moksori_timeline=1${params}`, {
        method: "POST",
        headers: { "Content-Type": "application/sdp", Authorization: `Bearer ${ek}` },
        body: sdp,
      });
      if (answer.status === 201) callId = (answer.headers.get("Location") || "").split("/").pop() || null;
      check();
      if (answer.status !== 201) throw new Error(`the server refused the offer (${answer.status}${await errorText(answer)})`);
      this.callId = callId;
      await pc.setRemoteDescription({ type: "answer", sdp: await answer.text() });
      check();
      timer = setTimeout(() => failWait(new Error(`the data channel did not open${why()}`)), OPEN_MS);
      await opened;
      check();
      this.open = true;
    } catch (e) {
      if (pc) {
        // a call the server answered but this peer never joined: hang it up rather than leave it to
        // the server's connect timeout (a connected one ends when the peer connection closes). The
        // peer connection closes once the hangup is answered: closed first, it may end the call
        // (DTLS got through) before the hangup arrives, which then finds no call (404). The
        // microphone is taken off it at once, so the call hears nothing more.
        const unjoined = callId && pc.connectionState !== "connected";
        if (this.pc === pc) this.drop();
        if (unjoined) {
          mute(pc);
          hangup(callId, key).finally(() => closePeer(pc));
        } else closePeer(pc);
      }
      throw cancelled() ? abortError() : e;
    } finally {
      clearTimeout(timer);
      if (signal && onAbort) signal.removeEventListener("abort", onAbort);
      if (attempt === this.attempt) this.cancelWait = null;
    }
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

  /** The largest event the data channel takes (its negotiated max-message-size), in bytes. */
  get maxMessageBytes() {
    const sctp = this.pc && this.pc.sctp;
    return sctp && sctp.maxMessageSize > 0 ? sctp.maxMessageSize : 65536;
  }

  /** false if not open; throws a RangeError (nothing sent) if the event is over maxMessageBytes. */
  send(event) {
    if (!this.channel || !this.open || this.channel.readyState !== "open") return false;
    const text = JSON.stringify(event);
    if (utf8Length(text) > this.maxMessageBytes) throw tooLarge(this.maxMessageBytes);
    this.channel.send(text);
    return true;
  }

  get bufferedAmount() {
    return this.channel ? this.channel.bufferedAmount : 0;
  }

  drop() {
    this.open = false;
    this.pc = null;
    this.channel = null;
    this.sender = null;
  }

  close() {
    this.attempt++; // a connect() under way gives up at its next step
    const connecting = this.cancelWait !== null;
    if (this.cancelWait) this.cancelWait();
    this.cancelWait = null;
    this.closing = true;
    const pc = this.pc;
    this.drop();
    if (!pc) return;
    if (connecting) {
      // that connect() closes it, once it has hung up a call the server may have answered (see
      // its catch); deaf from now on, and closed here anyway should it not have by then
      mute(pc);
      setTimeout(() => closePeer(pc), OPEN_MS + HANGUP_MS);
    } else closePeer(pc);
  }
}

function abortError() {
  const e = new Error("cancelled");
  e.name = "AbortError";
  return e;
}

function tooLarge(limit) {
  const e = new RangeError(`the message is larger than the ${limit} bytes the connection takes`);
  e.name = "MessageTooLarge";
  e.limit = limit;
  return e;
}

/** Best effort: POST /v1/realtime/calls/{id}/hangup; settles (never rejects) once answered, or
 *  after HANGUP_MS. Its answer does not matter. */
function hangup(callId, key) {
  return fetch(`/v1/realtime/calls/${encodeURIComponent(callId)}/hangup`, {
    method: "POST", keepalive: true, headers: key ? { Authorization: `Bearer ${key}` } : {},
    signal: AbortSignal.timeout(HANGUP_MS),
  }).catch(() => {});
}

function mute(pc) {
  for (const sender of pc.getSenders()) sender.replaceTrack(null).catch(() => {});
}

function closePeer(pc) {
  try {
    pc.close();
  } catch {
    /* already closed */
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
