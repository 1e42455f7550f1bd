// Calls SDK for the browser: the call server's protocol (docs/protocol.md) behind a CometChatCalls-like API.
// Plain ES module, no build step. One logged-in user and at most one call session per page.

export const CALL_MODE = Object.freeze({ DEFAULT: "DEFAULT", SPOTLIGHT: "SPOTLIGHT" });
export const CALL_TYPE = Object.freeze({ AUDIO: "audio", VIDEO: "video" });

// Most of the constants below copy one of the Python side's (the Calls SDK's, kiosk/janus.py's,
// kiosk/protocol.py's): tests/test_protocol_constants.py checks each against the one it copies.

// How long to wait for ICE gathering before sending an offer or answer to the SFU (Janus is given
// complete descriptions; peers in a mesh call get candidates trickled instead).
const GATHER_TIMEOUT_MS = 5000;
const REQUEST_TIMEOUT_MS = 10000;
// Group calls through Janus's VideoRoom (docs/protocol.md, "Group calls through the SFU"; docs/sfu.md).
const SFU_REQUEST_TIMEOUT_MS = 5000; // one HTTP request to Janus
const SFU_EVENT_TIMEOUT_MS = 10000; // a plugin's asynchronous reply (joined, configured, attached, started)
const SFU_KEEPALIVE_MS = 25000; // Janus drops a session after 60 s without a request
const SFU_POLL_TIMEOUT_MS = 45000; // Janus answers a quiet long poll after 30 s
const SFU_POLL_MAX_EVENTS = 10; // events one long poll may bring
const SFU_POLL_RETRY_MS = 200; // a failed long poll is retried once, after this
const SFU_DESTROY_TIMEOUT_MS = 2000; // leaving: destroying the Janus session does not wait long
const SFU_RETRY_MS = 1000; // between two attempts to (re)publish into the room
const SFU_RESUBSCRIBE_MS = 2000; // a feed whose connection failed is subscribed again after this
// Coming back after the signaling drops (docs/protocol.md, "Coming back"), as the Python Calls SDK does.
const RECONNECT_FIRST_MS = 500;
const RECONNECT_IN_CALL_MAX_MS = 1000;
const RECONNECT_MAX_MS = 30000;
const RECONNECT_MIN_MS = 50; // the shortest wait, jitter and the last attempt's own time taken off
const CONNECT_TIMEOUT_MS = 3000; // one attempt: open the WebSocket and authenticate
const PROBE_INTERVAL_MS = 2000; // in a call, `ping` this often...
const PROBE_TIMEOUT_MS = 2000; // ...and renew a connection whose pong does not come within this
const MEDIA_WATCH_MS = 500;
const MEDIA_STALL_MS = 1500; // nothing received this long: the media stopped (audio flows even muted)
const MEDIA_START_MS = 3000; // a rebuilt connection gets this long to bring its first media
const REBUILD_INTERVAL_MS = 2000; // between two rebuilds of the same peer connection
const OFFER_ANSWER_MS = 1500; // an offer unanswered this long is taken as lost
const SIGNALING_REFRESH_AFTER_MS = 3000; // no media from anyone this long: renew the signaling too
const SIGNALING_REFRESH_INTERVAL_MS = 4000;
const REJOIN_GRACE_MS = 20000; // the server's default rejoin grace, until its `joined` reply says
const IDLE_TIMEOUT_SECONDS = 180; // the documents' default idle timeout (setIdleTimeoutPeriod)
const IDLE_WARNING_SECONDS = 60; // "Warning appears 60 seconds before auto-termination"

export class CallsError extends Error {
  constructor(code, message) {
    super(message);
    this.code = code;
  }
}

const state = {
  baseUrl: "",
  authToken: null,
  user: null,
  signaling: null,
  reconnects: 0, // bumped to stop a reconnect loop (logout, or a newer loss)
  canOpenDoors: false, // as the server said at sign-in
  reconnecting: false,
  refreshing: false, // the connection is being dropped on purpose (a probe went unanswered)
  session: null,
  callListeners: new Map(), // ringing: onIncomingCallReceived, onOutgoingCallAccepted, ...
  sessionListeners: new Map(), // in-call: onUserJoined, onCallEnded, ...
  activeCall: null,
  audioInputId: null,
  videoInputId: null,
  audioOutputId: null,
};

/** Where the call server is; defaults to the page's own origin. */
export function init({ baseUrl = "" } = {}) {
  state.baseUrl = baseUrl.replace(/\/$/, "");
}

// ------------------------------------------------------------------ REST

async function rest(method, path, body, authToken = state.authToken) {
  const headers = { Authorization: `Bearer ${authToken}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(state.baseUrl + path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (err) {
    throw new CallsError("NETWORK", `call server unreachable: ${err.message}`);
  }
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    const e = data.error || {};
    throw new CallsError(e.code || `HTTP_${response.status}`, e.message || response.statusText);
  }
  return data;
}

/** The still of a call's caller (a JPEG Blob), or null: while the call rings, the newest one its
 * kiosk sent (ask again for a preview); after, the last (a missed call's picture). */
export async function getCallPicture(sessionId) {
  let response;
  try {
    response = await fetch(`${state.baseUrl}/v1/calls/${encodeURIComponent(sessionId)}/picture`, {
      headers: { Authorization: `Bearer ${state.authToken}` },
      cache: "no-store",
    });
  } catch (err) {
    throw new CallsError("NETWORK", `call server unreachable: ${err.message}`);
  }
  if (response.status === 404) return null;
  if (!response.ok) throw new CallsError(`HTTP_${response.status}`, response.statusText);
  return response.blob();
}

/** POST /v1/calls/token. Resolves with {token, sessionId, uid, expiresAt, iceServers}. */
export async function generateToken(sessionId, authToken = state.authToken) {
  if (!authToken) throw new CallsError("UNAUTHORIZED", "no auth token");
  return rest("POST", "/v1/calls/token", { sessionId }, authToken);
}

export const getUsers = async () => (await rest("GET", "/v1/users")).users;
export const getCallParticipantCount = async (sessionId, type) =>
  (await rest("GET", `/v1/sessions/${encodeURIComponent(sessionId)}/participants?type=${type}`)).count;
export const getCallLogs = (query = {}) => rest("GET", `/v1/calls?${new URLSearchParams(query)}`);

// ------------------------------------------------------------------ signaling

class Signaling {
  constructor(url) {
    this.url = url;
    this.ws = null;
    this.nextId = 0;
    this.pending = new Map();
    this.onmessage = () => {};
    this.onclose = () => {};
  }

  open(timeoutMs = REQUEST_TIMEOUT_MS) {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(this.url);
      this.ws = ws;
      const timer = setTimeout(() => {
        reject(new CallsError("NETWORK", "signaling connection timed out"));
        this.drop();
      }, timeoutMs);
      ws.onopen = () => {
        clearTimeout(timer);
        resolve();
      };
      ws.onerror = () => {
        clearTimeout(timer);
        reject(new CallsError("NETWORK", "signaling connection failed"));
      };
      ws.onclose = () => this.closed();
      ws.onmessage = (event) => this.receive(event.data);
    });
  }

  // Once per connection, whether the server closed it or we dropped it.
  closed() {
    if (this.done) return;
    this.done = true;
    for (const { reject: fail, timer } of this.pending.values()) {
      clearTimeout(timer);
      fail(new CallsError("NETWORK", "signaling connection closed"));
    }
    this.pending.clear();
    this.onclose();
  }

  // Give the connection up now: a WebSocket whose network died waits long for its closing handshake.
  drop() {
    if (this.ws) this.ws.close();
    this.closed();
  }

  receive(raw) {
    let message;
    try {
      message = JSON.parse(raw);
    } catch {
      return;
    }
    const waiting = message.id !== undefined ? this.pending.get(message.id) : undefined;
    if (waiting && ["ok", "error", "joined", "pong"].includes(message.type)) {
      this.pending.delete(message.id);
      clearTimeout(waiting.timer);
      if (message.type === "error") waiting.reject(new CallsError(message.error.code, message.error.message));
      else waiting.resolve(message);
      return;
    }
    this.onmessage(message);
  }

  request(type, fields = {}, timeoutMs = REQUEST_TIMEOUT_MS) {
    const id = `b${++this.nextId}`;
    return new Promise((resolve, reject) => {
      if (this.done || !this.ws || this.ws.readyState !== WebSocket.OPEN) {
        reject(new CallsError("NETWORK", "not connected to the call server"));
        return;
      }
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new CallsError("TIMEOUT", `no reply to ${type}`));
      }, timeoutMs);
      this.pending.set(id, { resolve, reject, timer });
      this.ws.send(JSON.stringify({ type, id, ...fields }));
    });
  }

  close() {
    if (this.ws) this.ws.close();
  }
}

function wsUrl() {
  const base = state.baseUrl ? new URL(state.baseUrl) : new URL(window.location.href);
  const scheme = base.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${base.host}/v1/ws`;
}

// Open a signaling connection and authenticate on it; resolves with {signaling, user}.
async function connect(authToken, timeoutMs = REQUEST_TIMEOUT_MS) {
  const signaling = new Signaling(wsUrl());
  await signaling.open(timeoutMs);
  signaling.onmessage = onPush;
  signaling.onclose = () => onSignalingClosed(signaling);
  try {
    const reply = await signaling.request("auth", { authToken }, timeoutMs);
    state.canOpenDoors = !!reply.canOpenDoors;
    return { signaling, user: reply.user };
  } catch (err) {
    signaling.drop();
    throw err;
  }
}

/** Connect the signaling WebSocket as the owner of `authToken`; resolves with the user. */
export async function login(authToken) {
  if (state.signaling || state.reconnecting) logout();
  state.authToken = authToken;
  const { signaling, user } = await connect(authToken);
  state.signaling = signaling;
  state.user = user;
  return user;
}

export function logout() {
  const signaling = state.signaling;
  state.signaling = null;
  state.reconnects++;
  state.reconnecting = false;
  if (state.session) state.session.teardown("logout");
  if (signaling) signaling.drop();
  state.user = null;
}

// The connection dropped without logout(). Media is peer to peer and goes on: the session stays, and
// we reconnect and rejoin it within the server's rejoin grace (docs/protocol.md, "Coming back").
function onSignalingClosed(signaling) {
  if (state.signaling !== signaling) return; // logout(), or a connection not in use yet
  state.signaling = null;
  const onPurpose = state.refreshing;
  state.refreshing = false;
  const session = state.session;
  if (!onPurpose) {
    if (session) session.error("CONNECTION_LOST", "lost the connection to the call server; reconnecting");
    emitCall("onConnectionLost");
  }
  if (session) session.signalingLost();
  reconnect();
}

async function reconnect() {
  const run = ++state.reconnects;
  state.reconnecting = true;
  let delay = RECONNECT_FIRST_MS;
  let waited = 0; // how long the last attempt itself took (a connect that timed out)
  while (state.reconnects === run) {
    // Jitter spreads a fleet's retries; the delay counts from the start of the last attempt.
    await sleep(Math.max(RECONNECT_MIN_MS, delay * (0.5 + Math.random()) - waited));
    if (state.reconnects !== run) return;
    const started = Date.now();
    let connected;
    try {
      connected = await connect(state.authToken, CONNECT_TIMEOUT_MS);
    } catch (err) {
      if (err.code === "UNAUTHORIZED" && state.reconnects === run) {
        // The token was revoked (or the user removed): no retry can succeed, and each one would
        // count as a failed sign-in from this address. Stop; the page signs in again.
        state.reconnecting = false;
        if (state.session) state.session.teardown("lost");
        state.user = null;
        emitCall("onSignedOut", { code: err.code, message: "the call server no longer accepts this auth token" });
        return;
      }
      waited = Date.now() - started;
      // In a call, keep trying often: the call waits on it. Idle, back off further.
      delay = Math.min(state.session ? RECONNECT_IN_CALL_MAX_MS : RECONNECT_MAX_MS, delay * 2);
      continue;
    }
    if (state.reconnects !== run) {
      connected.signaling.drop(); // logged out meanwhile
      return;
    }
    state.reconnecting = false;
    state.signaling = connected.signaling;
    state.user = connected.user;
    emitCall("onReconnected", connected.user);
    const session = state.session;
    if (!session || !session.active) return;
    try {
      await session.rejoin();
    } catch (err) {
      if (state.signaling !== connected.signaling) return; // lost again: a new attempt has started
      if (err.code === "TIMEOUT") {
        refreshSignaling(); // the new connection is dead already
        return;
      }
      // The server will not have us back (the session is over, the token expired): the call is over here.
      if (state.session === session) session.teardown("lost");
    }
    return;
  }
}

// Drop the signaling connection and make a new one (it did not answer a ping in time: it may be dead
// without knowing it, and a new one is up as soon as the network is back).
function refreshSignaling() {
  if (!state.signaling) return;
  state.refreshing = true;
  state.signaling.drop();
}

export const getLoggedInUser = () => state.user;

function onPush(message) {
  switch (message.type) {
    case "call.incoming":
      state.activeCall = state.activeCall || message.call;
      emitCall("onIncomingCallReceived", message.call);
      break;
    case "call.updated":
      onCallUpdated(message.call);
      break;
    default:
      if (state.session && message.sessionId === state.session.sessionId) state.session.handle(message);
  }
}

function onCallUpdated(call) {
  const mine = state.user && call.initiator.uid === state.user.uid;
  if (call.status === "ongoing" && call.answeredBy && !mine && call.answeredBy.uid !== state.user?.uid) {
    // A ring group's call another member answered: it stops ringing here ("answered elsewhere").
    if (state.activeCall && state.activeCall.sessionId === call.sessionId) {
      state.activeCall = null;
      emitCall("onIncomingCallCancelled", call);
    }
    return;
  }
  const final = !["initiated", "ongoing"].includes(call.status);
  if (state.activeCall && state.activeCall.sessionId === call.sessionId) {
    state.activeCall = final ? null : call;
  }
  if (call.status === "ongoing" && mine) emitCall("onOutgoingCallAccepted", call);
  else if ((call.status === "rejected" || call.status === "busy") && mine) emitCall("onOutgoingCallRejected", call);
  else if ((call.status === "cancelled" || call.status === "unanswered") && !mine)
    emitCall("onIncomingCallCancelled", call);
  else if (call.status === "unanswered" && mine) emitCall("onOutgoingCallRejected", call);
  else if (call.status === "ended") emitCall("onCallEndedMessageReceived", call);
}

// ------------------------------------------------------------------ ringing

export function addCallListener(listenerId, listener) {
  state.callListeners.set(listenerId, listener);
}
export function removeCallListener(listenerId) {
  state.callListeners.delete(listenerId);
}

function emitCall(name, ...args) {
  for (const listener of state.callListeners.values()) safeCall(listener, name, args);
}

function safeCall(listener, name, args) {
  const fn = listener && listener[name];
  if (typeof fn !== "function") return;
  try {
    fn.apply(listener, args);
  } catch (err) {
    console.error(`listener ${name} failed`, err);
  }
}

export async function initiateCall(receiverUid, callType = CALL_TYPE.VIDEO) {
  const call = await rest("POST", "/v1/calls", { receiverUid, callType });
  state.activeCall = call.status === "initiated" ? call : null;
  return call;
}

async function callAction(sessionId, action, body) {
  const call = await rest("POST", `/v1/calls/${encodeURIComponent(sessionId)}/${action}`, body);
  state.activeCall = ["initiated", "ongoing"].includes(call.status) ? call : null;
  return call;
}

export const acceptCall = (sessionId) => callAction(sessionId, "accept");
export const rejectCall = (sessionId, status = "rejected") => callAction(sessionId, "reject", { status });
export const endCall = (sessionId) => callAction(sessionId, "end");
export const getActiveCall = () => state.activeCall || undefined;
export function clearActiveCall() {
  state.activeCall = null;
}

// ------------------------------------------------------------------ settings and listeners

export class OngoingCallListener {
  constructor(handlers = {}) {
    Object.assign(this, handlers);
  }
}

export const ASPECT_RATIO = Object.freeze({ CONTAIN: "contain", COVER: "cover" });
export const POSITION = Object.freeze({ TOP_LEFT: "top-left", TOP_RIGHT: "top-right", BOTTOM_LEFT: "bottom-left", BOTTOM_RIGHT: "bottom-right" });

function checkChoice(choices, value, what) {
  const found = Object.values(choices).find((v) => v === String(value).toLowerCase().replace(/_/g, "-"));
  if (!found) throw new CallsError("INVALID_SETTING", `${what} must be one of ${Object.values(choices).join(", ")}, not ${value}`);
  return found;
}

function checkVisible(visible) {
  if (typeof visible !== "boolean") throw new CallsError("INVALID_SETTING", `visible must be true or false, not ${visible}`);
  return visible;
}

// The main video container of the default layout (the documents' Video View Customisation): the
// picture's fit, the name label, and the zoom, user-list and full-screen buttons, each in a corner.
export class MainVideoContainerSetting {
  constructor() {
    this.aspectRatio = ASPECT_RATIO.CONTAIN;
    this.fullScreenButton = { position: POSITION.BOTTOM_RIGHT, visible: true };
    this.nameLabel = { position: POSITION.BOTTOM_LEFT, visible: true, backgroundColor: "#333333" };
    this.zoomButton = { position: POSITION.BOTTOM_RIGHT, visible: true };
    this.userListButton = { position: POSITION.BOTTOM_RIGHT, visible: true };
  }
  setMainVideoAspectRatio(ratio) {
    this.aspectRatio = checkChoice(ASPECT_RATIO, ratio, "aspect ratio");
    return this;
  }
  setFullScreenButtonParams(position, visible) {
    this.fullScreenButton = { position: checkChoice(POSITION, position, "position"), visible: checkVisible(visible) };
    return this;
  }
  setNameLabelParams(position, visible, backgroundColor = "#333333") {
    this.nameLabel = { position: checkChoice(POSITION, position, "position"), visible: checkVisible(visible),
                       backgroundColor: String(backgroundColor) };
    return this;
  }
  setZoomButtonParams(position, visible) {
    this.zoomButton = { position: checkChoice(POSITION, position, "position"), visible: checkVisible(visible) };
    return this;
  }
  setUserListButtonParams(position, visible) {
    this.userListButton = { position: checkChoice(POSITION, position, "position"), visible: checkVisible(visible) };
    return this;
  }
}

export class CallSettings {
  constructor(values) {
    Object.assign(this, values);
    Object.freeze(this);
  }
}

export class CallSettingsBuilder {
  constructor() {
    this.values = {
      defaultLayout: true,
      audioOnly: false,
      listener: null,
      mode: CALL_MODE.DEFAULT,
      startAudioMuted: false,
      startVideoMuted: false,
      showEndCallButton: true,
      showMuteAudioButton: true,
      showPauseVideoButton: true,
      showScreenShareButton: true,
      showModeButton: true,
      showSwitchToVideoCallButton: true,
      idleTimeoutSeconds: IDLE_TIMEOUT_SECONDS,
      mainVideoContainer: new MainVideoContainerSetting(),
      videoCodec: null, // "H264" or "VP8": put first in the offer/answer (setCodecPreferences), like the Python SDK
    };
  }
  set(key, value) {
    this.values[key] = value;
    return this;
  }
  enableDefaultLayout(on) { return this.set("defaultLayout", !!on); }
  setIsAudioOnlyCall(on) { return this.set("audioOnly", !!on); }
  setCallListener(listener) { return this.set("listener", listener); }
  setMode(mode) { return this.set("mode", checkMode(mode)); }
  startWithAudioMuted(on) { return this.set("startAudioMuted", !!on); }
  startWithVideoMuted(on) { return this.set("startVideoMuted", !!on); }
  showEndCallButton(on) { return this.set("showEndCallButton", !!on); }
  showMuteAudioButton(on) { return this.set("showMuteAudioButton", !!on); }
  showPauseVideoButton(on) { return this.set("showPauseVideoButton", !!on); }
  showScreenShareButton(on) { return this.set("showScreenShareButton", !!on); }
  showModeButton(on) { return this.set("showModeButton", !!on); }
  showSwitchToVideoCallButton(on) { return this.set("showSwitchToVideoCallButton", !!on); }
  setIdleTimeoutPeriod(seconds) { return this.set("idleTimeoutSeconds", Number(seconds)); }
  setMainVideoContainerSetting(setting) {
    if (!(setting instanceof MainVideoContainerSetting))
      throw new CallsError("INVALID_SETTING", "setMainVideoContainerSetting takes a MainVideoContainerSetting");
    // A copy: changing the object afterwards does not change settings already built.
    return this.set("mainVideoContainer", Object.assign(new MainVideoContainerSetting(), structuredClone({ ...setting })));
  }
  setVideoCodec(codec) { return this.set("videoCodec", checkCodec(codec)); }
  build() { return new CallSettings({ ...this.values }); }
}

const VIDEO_CODECS = ["VP8", "H264"];

function checkCodec(codec) {
  if (codec === null || codec === undefined || codec === "") return null;
  const name = String(codec).toUpperCase();
  if (!VIDEO_CODECS.includes(name))
    throw new CallsError("INVALID_CODEC", `video codec must be VP8 or H264, not ${codec}`);
  return name;
}

// The browser's video codecs with `codec` first. For H.264, packetization-mode=1 constrained baseline
// (what aiortc encodes and decodes) leads. Without the capability API, the browser's own order stays.
function preferVideoCodec(transceiver, codec) {
  if (!codec || typeof transceiver.setCodecPreferences !== "function" || !RTCRtpReceiver.getCapabilities) return;
  const codecs = RTCRtpReceiver.getCapabilities("video")?.codecs || [];
  const mime = `video/${codec}`.toLowerCase();
  const rank = (c) => {
    if (c.mimeType.toLowerCase() !== mime) return 3;
    const fmtp = c.sdpFmtpLine || "";
    if (codec !== "H264") return 0;
    if (fmtp.includes("packetization-mode=1") && /profile-level-id=42e0/.test(fmtp)) return 0;
    return fmtp.includes("packetization-mode=1") ? 1 : 2;
  };
  const ordered = codecs
    .map((c, i) => [rank(c), i, c])
    .sort((a, b) => a[0] - b[0] || a[1] - b[1])
    .map((x) => x[2]);
  if (!ordered.length || rank(ordered[0]) === 3) return; // the browser cannot do that codec
  try {
    transceiver.setCodecPreferences(ordered);
  } catch (err) {
    console.warn("setCodecPreferences failed", err);
  }
}

function checkMode(mode) {
  if (!Object.values(CALL_MODE).includes(mode)) throw new CallsError("INVALID_MODE", `unknown mode ${mode}`);
  return mode;
}

export function addCallEventListener(listenerId, listener) {
  state.sessionListeners.set(listenerId, listener);
}
export function removeCallEventListener(listenerId) {
  state.sessionListeners.delete(listenerId);
}

// ------------------------------------------------------------------ the session

function waitForGathering(pc) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      if (pc.iceGatheringState !== "complete") return;
      pc.removeEventListener("icegatheringstatechange", done);
      clearTimeout(timer);
      resolve();
    };
    // Past the timeout we send what we have: a host candidate is usually enough on a LAN.
    const timer = setTimeout(resolve, GATHER_TIMEOUT_MS);
    pc.addEventListener("icegatheringstatechange", done);
  });
}

function mediaErrorMessage(err) {
  if (err.name === "NotAllowedError" || err.name === "SecurityError")
    return ["MEDIA_PERMISSION_DENIED", "camera/microphone access was refused; the call continues without them"];
  if (err.name === "NotFoundError" || err.name === "OverconstrainedError")
    return ["DEVICE_NOT_FOUND", "no camera or microphone found; the call continues without them"];
  if (err.name === "NotReadableError")
    return ["DEVICE_BUSY", "the camera or microphone is in use by another program"];
  return ["MEDIA_ERROR", `camera/microphone failed: ${err.message}`];
}

// ------------------------------------------------------------------ Janus (group calls)

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const transactionId = () => Math.random().toString(36).slice(2, 14);
const sfuUnavailable = (message) => new CallsError("SFU_UNAVAILABLE", message);
const JANUS_NO_SUCH_ROOM = 426; // a VideoRoom error: the room is gone (Janus restarted)
const JANUS_NO_SUCH_SESSION = 458; // a Janus core error: our session is gone (timed out, Janus restarted)

// One Janus API session over its HTTP transport: requests, a keepalive every 25 s, and one long poll
// for the events of all its handles. Bodies go as text/plain (Janus reads any), so a request from the
// page's origin is a "simple" cross-origin request; Janus answers with Access-Control-Allow-Origin.
class JanusSession {
  constructor(url) {
    this.url = url.replace(/\/$/, "");
    this.id = null;
    this.pending = new Map(); // transaction -> {resolve, reject, timer}: asynchronous plugin replies
    this.handles = new Map(); // handle id -> onEvent(data, jsep) for events Janus sends on its own
    this.closed = false;
    this.error = null; // why the session stopped, if Janus went away
    this.onlost = () => {};
    this.keepaliveTimer = null;
    this.pollAbort = null;
    this.publishers = new Map(); // feed -> uid: the others publishing in the room now
    this.feed = null; // our own publisher id
    this.privateId = null; // given to our subscriptions, so Janus ties them to us
    this.pc = null; // our send-only publisher connection
  }

  async post(path, body, timeoutMs = SFU_REQUEST_TIMEOUT_MS, keepalive = false) {
    let reply;
    try {
      const response = await fetch(this.url + path, {
        method: "POST",
        body: JSON.stringify({ transaction: transactionId(), ...body }),
        signal: AbortSignal.timeout(timeoutMs),
        keepalive,
      });
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      reply = await response.json();
    } catch (err) {
      throw sfuUnavailable(`Janus at ${this.url} is unavailable: ${err.message}`);
    }
    if (!reply || typeof reply !== "object") throw sfuUnavailable("Janus sent a reply that is not a JSON object");
    if (reply.janus === "error")
      throw new CallsError("SFU_ERROR", `Janus refused ${body.janus}: ${reply.error?.reason} (${reply.error?.code})`);
    return reply;
  }

  check() {
    if (this.error) throw this.error;
    if (this.closed || this.id === null) throw sfuUnavailable("the Janus session is closed");
  }

  async create() {
    const reply = await this.post("", { janus: "create" });
    this.id = reply.data.id;
    if (this.closed) {
      this.post(`/${this.id}`, { janus: "destroy" }).catch(() => {}); // closed while it was being made
      return;
    }
    this.keepaliveTimer = setInterval(() => {
      this.post(`/${this.id}`, { janus: "keepalive" }).catch((err) => this.lost(err));
    }, SFU_KEEPALIVE_MS);
    this.poll();
  }

  async attach(onEvent = () => {}) {
    this.check();
    const reply = await this.post(`/${this.id}`, { janus: "attach", plugin: "janus.plugin.videoroom" });
    this.handles.set(reply.data.id, onEvent);
    return reply.data.id;
  }

  // A plugin request on a handle; an asynchronous one ("ack") waits for its event. Resolves {data, jsep}.
  async request(handle, body, jsep = null, timeoutMs = SFU_EVENT_TIMEOUT_MS) {
    this.check();
    const transaction = transactionId();
    const event = new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(transaction);
        reject(sfuUnavailable(`Janus did not answer ${body.request} in time`));
      }, timeoutMs);
      this.pending.set(transaction, { resolve, reject, timer });
    });
    event.catch(() => {}); // awaited below, or given up with the request
    const message = { janus: "message", transaction, body };
    if (jsep) message.jsep = jsep;
    let reply;
    try {
      reply = await this.post(`/${this.id}/${handle}`, message);
      if (reply.janus === "ack") reply = await event;
    } finally {
      const waiting = this.pending.get(transaction);
      if (waiting) {
        clearTimeout(waiting.timer);
        this.pending.delete(transaction);
      }
    }
    if (reply.janus === "error") throw new CallsError("SFU_ERROR", `Janus: ${reply.error?.reason}`);
    const data = reply.plugindata?.data || {};
    if (data.error_code || data.error) {
      const err = new CallsError("SFU_ERROR", `Janus VideoRoom: ${data.error} (${data.error_code})`);
      err.janusCode = data.error_code;
      throw err;
    }
    return { data, jsep: reply.jsep || null };
  }

  detach(handle) {
    this.handles.delete(handle);
    if (this.closed || this.error) return;
    this.post(`/${this.id}/${handle}`, { janus: "detach" }).catch(() => {}); // best effort
  }

  async poll() {
    let failures = 0;
    while (!this.closed && !this.error) {
      let events;
      const controller = new AbortController();
      this.pollAbort = controller;
      const timer = setTimeout(() => controller.abort(), SFU_POLL_TIMEOUT_MS);
      try {
        const url = `${this.url}/${this.id}?maxev=${SFU_POLL_MAX_EVENTS}&rid=${Date.now()}`;
        const response = await fetch(url, { signal: controller.signal });
        if (!response.ok) throw new Error(`HTTP ${response.status}`);
        events = await response.json();
        failures = 0;
      } catch (err) {
        if (this.closed) return;
        if (++failures >= 2) {
          // one retry: a single dropped connection is not Janus gone
          this.lost(sfuUnavailable(`Janus poll failed: ${err.message}`));
          return;
        }
        await sleep(SFU_POLL_RETRY_MS);
        continue;
      } finally {
        clearTimeout(timer);
      }
      for (const event of Array.isArray(events) ? events : [events]) {
        if (this.closed) return;
        if (event?.janus === "error" && event.error?.code === JANUS_NO_SUCH_SESSION) {
          this.lost(sfuUnavailable("Janus dropped the session")); // it timed out there
          return;
        }
        this.dispatch(event);
      }
    }
  }

  dispatch(event) {
    if (!event || typeof event !== "object" || event.janus === "keepalive" || event.janus === "ack") return;
    const waiting = event.transaction ? this.pending.get(event.transaction) : undefined;
    if (waiting && ["event", "success", "error"].includes(event.janus)) {
      this.pending.delete(event.transaction);
      clearTimeout(waiting.timer);
      waiting.resolve(event);
      return;
    }
    const onEvent = this.handles.get(event.sender);
    if (onEvent && event.janus === "event") {
      try {
        onEvent(event.plugindata?.data || {}, event.jsep || null);
      } catch (err) {
        console.error("handling a Janus event failed", err);
      }
    }
  }

  stop(error) {
    clearInterval(this.keepaliveTimer);
    if (this.pollAbort) this.pollAbort.abort();
    for (const { reject, timer } of this.pending.values()) {
      clearTimeout(timer);
      reject(error);
    }
    this.pending.clear();
  }

  lost(error) {
    if (this.closed || this.error) return;
    this.error = error;
    this.stop(error);
    this.onlost(error);
  }

  // Leave: our publisher connection closes, and destroying the session detaches every handle on it, so
  // the room tells the others we unpublished. Best effort, and sent even while the page unloads.
  destroy() {
    if (this.closed) return;
    this.closed = true;
    this.stop(sfuUnavailable("the Janus session was closed"));
    if (this.pc) this.pc.close();
    if (this.id !== null && !this.error)
      this.post(`/${this.id}`, { janus: "destroy" }, SFU_DESTROY_TIMEOUT_MS, true).catch(() => {});
  }
}

class Session {
  constructor(sessionId, settings, element) {
    this.sessionId = sessionId;
    this.settings = settings;
    this.element = element;
    this.audioOnly = settings.audioOnly;
    this.audioMuted = settings.startAudioMuted;
    this.videoMuted = settings.startVideoMuted;
    this.mode = settings.mode;
    this.self = null;
    this.participants = new Map(); // uid -> Participant
    // uid -> {pc, stream}: a mesh connection, or (SFU) the receive-only subscription to its feed,
    // which also has {feed, handle, janus}. Either way the layout shows `stream` in that uid's tile.
    this.peers = new Map();
    this.mediaMode = "mesh";
    this.janus = null; // the JanusSession we publish on, once the session goes through the SFU
    this.sfuRoom = null; // the room's `sfu` description from the server
    this.localStream = new MediaStream();
    this.iceServers = [];
    this.active = false;
    this.ended = false;
    this.idleTimer = null;
    // Staying in the call when the signaling drops (docs/protocol.md, "Coming back").
    this.callToken = null;
    this.rejoinGraceMs = REJOIN_GRACE_MS; // the server says how long it keeps our place
    this.rejoinedSinceLoss = true; // false from a signaling loss until the rejoin succeeded
    this.graceTimer = null;
    this.probeTimer = null;
    this.watchTimer = null;
    this.hadMedia = new Set(); // participants whose media has flowed (so it can stop)
    this.lastMediaFrom = new Map(); // uid -> newest media from it (ms), across rebuilt connections
    this.rebuiltAt = new Map(); // uid -> when we last rebuilt its peer connection
    this.refreshedAt = 0;
    this.screenTrack = null; // the shared screen, sent in place of the camera (startScreenShare)
    this.cameraTrack = null; // the camera put aside meanwhile
    this.layout = settings.defaultLayout && element ? new DefaultLayout(this, element) : null;
  }

  emit(name, ...args) {
    // Each listener once, even when it is both the settings' and registered by id (as in Python).
    for (const listener of new Set([this.settings.listener, ...state.sessionListeners.values()])) {
      safeCall(listener, name, args);
    }
  }

  error(code, message) {
    this.emit("onError", { code, message });
  }

  async captureMedia() {
    const constraints = {
      audio: state.audioInputId ? { deviceId: { exact: state.audioInputId } } : true,
      video: this.audioOnly ? false : state.videoInputId ? { deviceId: { exact: state.videoInputId } } : true,
    };
    try {
      this.localStream = await navigator.mediaDevices.getUserMedia(constraints);
    } catch (err) {
      const [code, message] = mediaErrorMessage(err);
      this.error(code, message);
      this.localStream = new MediaStream();
    }
    this.applyMute();
  }

  track(kind) {
    return this.localStream.getTracks().find((t) => t.kind === kind) || null;
  }

  applyMute() {
    const audio = this.track("audio");
    const video = this.track("video");
    if (audio) audio.enabled = !this.audioMuted;
    if (video) video.enabled = !this.videoMuted;
    if (this.layout) this.layout.update();
  }

  async join(callToken) {
    const reply = await state.signaling.request("join", {
      sessionId: this.sessionId,
      callToken,
      audioMuted: this.audioMuted,
      videoMuted: this.videoMuted,
      audioOnly: this.audioOnly,
    });
    this.active = true;
    this.callToken = callToken;
    if (reply.rejoinGraceMs !== undefined) this.rejoinGraceMs = reply.rejoinGraceMs;
    this.self = reply.self;
    this.iceServers = reply.iceServers || [];
    if (reply.audioOnly && !this.audioOnly) {
      // A call rung as audio: keep the camera off until someone switches to video.
      this.audioOnly = true;
      const video = this.track("video");
      if (video) {
        video.stop();
        this.localStream.removeTrack(video);
      }
    }
    for (const p of reply.participants || []) this.participants.set(p.uid, p);
    if (this.layout) this.layout.update();
    if (this.participants.size) this.emit("onUserListUpdated", this.userList());
    for (const p of this.participants.values()) if (p.audioMuted || p.videoMuted) this.emitMuted(p);
    // A recording already going on when we joined: as if we had seen it start.
    for (const p of this.participants.values()) {
      if (p.recordingSince != null) {
        this.emit("onRecordingToggled", { recording: true, user: { uid: p.uid, name: p.name, avatar: p.avatar },
                                          at: p.recordingSince });
      }
    }
    if (reply.media?.mode === "sfu") this.useSfu(reply.media.sfu);
    // The joiner offers to everyone already in the session; they answer (docs/protocol.md, "mesh").
    else for (const uid of this.participants.keys()) this.guard(this.offerTo(uid));
    this.resetIdleTimer();
    this.watchTimer = setInterval(() => this.guard(this.watchMedia()), MEDIA_WATCH_MS);
    this.probeTimer = setInterval(() => this.probeSignaling(), PROBE_INTERVAL_MS);
  }

  // ---------------------------------------------------------------- staying connected

  signalingLost() {
    this.rejoinedSinceLoss = false;
    if (this.graceTimer) return;
    this.graceTimer = setTimeout(() => {
      this.graceTimer = null;
      // Not back within the server's grace: it has dropped us; for this page the call is over.
      if (!this.rejoinedSinceLoss && state.session === this) this.teardown("lost");
    }, this.rejoinGraceMs);
  }

  // After the signaling reconnected: take our place in the session back (the server kept it for its
  // grace, or builds the session again after a restart), then bring the participant list and any
  // broken peer connection up to date.
  async rejoin() {
    const reply = await state.signaling.request("join", {
      sessionId: this.sessionId,
      callToken: this.callToken,
      audioMuted: this.audioMuted,
      videoMuted: this.videoMuted,
      audioOnly: this.audioOnly,
      rejoin: true,
    });
    if (!this.active) return;
    this.rejoinedSinceLoss = true;
    clearTimeout(this.graceTimer);
    this.graceTimer = null;
    if (reply.rejoinGraceMs !== undefined) this.rejoinGraceMs = reply.rejoinGraceMs;
    if (reply.iceServers) this.iceServers = reply.iceServers;
    const listed = new Set();
    for (const p of reply.participants || []) {
      listed.add(p.uid);
      this.updateParticipant(p);
    }
    if (reply.rejoined) {
      // The server kept the session: whoever it no longer lists left while we were away.
      for (const uid of [...this.participants.keys()]) if (!listed.has(uid)) this.participantLeft(uid);
    } else {
      // The server restarted and knows only those who came back before us; the others are kept while
      // their media flows or until they rejoin within the grace.
      setTimeout(() => this.forgetUnconfirmed(listed), this.rejoinGraceMs);
    }
    if (reply.media?.mode === "sfu") this.useSfu(reply.media.sfu);
    else for (const uid of listed) this.rebuildIfBroken(uid, true);
    if (this.layout) this.layout.update();
  }

  forgetUnconfirmed(confirmed) {
    if (!this.active) return;
    const hadOthers = this.participants.size > 0;
    for (const uid of [...this.participants.keys()]) {
      const peer = this.peers.get(uid);
      if (!confirmed.has(uid) && (!peer || !this.receiving(peer, MEDIA_STALL_MS))) this.participantLeft(uid);
    }
    // Everyone we were talking to is gone (the session ended while we were away): the call is over.
    if (hadOthers && !this.participants.size) this.teardown("lost");
  }

  // A participant the server (re)announces: new ones are added, known ones updated (no second join).
  updateParticipant(p) {
    const known = this.participants.get(p.uid);
    if (!known) {
      this.participants.set(p.uid, p);
      this.resetIdleTimer();
      this.emit("onUserJoined", p);
      this.emit("onUserListUpdated", this.userList());
      if (p.audioMuted || p.videoMuted) this.emitMuted(p);
      return;
    }
    const changed = !!known.audioMuted !== !!p.audioMuted || !!known.videoMuted !== !!p.videoMuted;
    Object.assign(known, p);
    if (changed) this.emitMuted(known);
  }

  participantLeft(uid, announced = null) {
    const p = this.participants.get(uid) || announced;
    this.participants.delete(uid);
    this.closePeer(uid);
    this.hadMedia.delete(uid);
    this.lastMediaFrom.delete(uid);
    if (this.layout) this.layout.update();
    this.resetIdleTimer();
    if (!p) return;
    this.emit("onUserLeft", p);
    this.emit("onUserListUpdated", this.userList());
  }

  // Who rebuilds a broken peer connection: the smaller uid (as the Python SDK), so both never offer at once.
  initiatesWith(uid) {
    return (this.self?.uid ?? "") < uid;
  }

  receiving(peer, withinMs) {
    return peer.lastMediaAt !== undefined && Date.now() - peer.lastMediaAt < withinMs;
  }

  awaitingAnswer(peer, withinMs) {
    return peer.pc.signalingState === "have-local-offer" && !!peer.offeredAt && Date.now() - peer.offeredAt < withinMs;
  }

  rebuildIfBroken(uid, nowReachable = false) {
    const peer = this.peers.get(uid);
    if (this.mediaMode === "sfu" || !this.active || !this.participants.has(uid) || !this.initiatesWith(uid)) return;
    if (peer && this.receiving(peer, MEDIA_STALL_MS)) return;
    // One offer in flight at a time, unless that one went to a connection now gone.
    if (peer && this.awaitingAnswer(peer, OFFER_ANSWER_MS) && !nowReachable) return;
    const now = Date.now();
    if (!nowReachable && now - (this.rebuiltAt.get(uid) || 0) < REBUILD_INTERVAL_MS) return;
    this.rebuiltAt.set(uid, now);
    this.guard(this.offerTo(uid));
  }

  // Whether the connection to a participant whose media has flowed no longer carries it.
  broken(uid, peer) {
    if (!this.participants.has(uid) || !this.hadMedia.has(uid) || this.receiving(peer, MEDIA_STALL_MS)) return false;
    const age = Date.now() - peer.createdAt;
    if (peer.pc.signalingState === "have-local-offer" && peer.offeredAt)
      return Date.now() - peer.offeredAt > OFFER_ANSWER_MS; // our offer went unanswered
    if (peer.lastMediaAt === undefined) return age > MEDIA_START_MS; // negotiated: give it time to connect
    return age > MEDIA_STALL_MS; // media came, then stopped
  }

  // Notice a peer whose media stopped: the smaller uid builds a new connection as soon as signaling can
  // carry the offer, and everyone silent at once renews a signaling connection that may be dead.
  async watchMedia() {
    if (this.watching || !this.active || this.mediaMode === "sfu") return;
    this.watching = true;
    try {
      for (const [uid, peer] of [...this.peers]) {
        let packets = 0;
        let report;
        try {
          report = await peer.pc.getStats();
        } catch {
          continue; // closed meanwhile (replaced, or its participant left)
        }
        report.forEach((r) => {
          if (r.type === "inbound-rtp") packets += r.packetsReceived || 0;
        });
        if (packets > (peer.packets || 0)) {
          peer.packets = packets;
          peer.lastMediaAt = Date.now();
        }
        if (peer.lastMediaAt !== undefined) {
          this.hadMedia.add(uid);
          this.lastMediaFrom.set(uid, Math.max(this.lastMediaFrom.get(uid) || 0, peer.lastMediaAt));
        }
      }
    } finally {
      this.watching = false;
    }
    if (!this.active) return;
    const now = Date.now();
    if (state.signaling)
      for (const [uid, peer] of [...this.peers]) if (this.broken(uid, peer)) this.rebuildIfBroken(uid);
    const flowed = [...this.participants.keys()].filter((u) => this.lastMediaFrom.has(u));
    const newest = Math.max(0, ...flowed.map((u) => this.lastMediaFrom.get(u)));
    if (
      flowed.length &&
      now - newest >= SIGNALING_REFRESH_AFTER_MS &&
      now - this.refreshedAt >= SIGNALING_REFRESH_INTERVAL_MS
    ) {
      this.refreshedAt = now;
      refreshSignaling();
    }
  }

  // A TCP connection whose network died looks open for minutes, and what the server sends us (an
  // offer that rebuilds a connection) would wait behind its retransmits: no pong in time, renew it.
  probeSignaling() {
    const signaling = state.signaling;
    if (!this.active || !signaling) return; // reconnecting already
    signaling.request("ping", {}, PROBE_TIMEOUT_MS).catch((err) => {
      if (err.code === "TIMEOUT" && this.active && state.signaling === signaling) refreshSignaling();
    });
  }

  guard(promise) {
    promise.catch((err) => {
      if (this.active) this.error(err.code || "PEER_ERROR", err.message);
    });
  }

  userList() {
    return [this.self, ...this.participants.values()].filter(Boolean);
  }

  newPeer(uid) {
    this.closePeer(uid);
    const pc = new RTCPeerConnection({ iceServers: this.iceServers });
    // Candidates trickle: each one is sent as it is found, once the description it belongs to has
    // gone (those found before wait here), so the call needs no wait for gathering to finish.
    const peer = { pc, stream: new MediaStream(), createdAt: Date.now(), earlyCandidates: [], described: false };
    this.peers.set(uid, peer);
    pc.onicecandidate = (event) => {
      const candidate = event.candidate ? event.candidate.toJSON() : null;
      if (peer.described) this.sendCandidate(uid, pc, candidate);
      else peer.earlyCandidates.push(candidate);
    };
    pc.ontrack = (event) => {
      peer.stream.addTrack(event.track);
      if (this.layout) this.layout.update();
    };
    pc.onconnectionstatechange = () => {
      if (pc.connectionState === "failed" && this.active)
        this.error("PEER_CONNECTION_FAILED", `media connection to ${uid} failed`);
    };
    return peer;
  }

  // The description (offer or answer) of this connection went out: its candidates may follow.
  described(uid, pc) {
    const peer = this.peers.get(uid);
    if (!peer || peer.pc !== pc) return;
    peer.described = true;
    for (const candidate of peer.earlyCandidates.splice(0)) this.sendCandidate(uid, pc, candidate);
  }

  sendCandidate(uid, pc, candidate) {
    if (!this.active || this.peers.get(uid)?.pc !== pc || !state.signaling) return;
    // A candidate that does not arrive costs one path, not the call: no error is shown for it.
    state.signaling
      .request("candidate", { sessionId: this.sessionId, to: uid, candidate })
      .catch((err) => console.debug("candidate not sent", err));
  }

  closePeer(uid) {
    const peer = this.peers.get(uid);
    if (!peer) return;
    this.peers.delete(uid);
    peer.pc.close();
    if (peer.handle) peer.janus.detach(peer.handle);
  }

  // A negotiation whose connection was replaced or closed meanwhile (a newer offer, the switch to the
  // SFU) fails on the closed connection: that is no error of the call.
  unlessReplaced(uid, pc, promise) {
    return promise.catch((err) => {
      if (this.peers.get(uid)?.pc === pc) throw err;
    });
  }

  offerTo(uid) {
    const { pc } = this.newPeer(uid);
    return this.unlessReplaced(uid, pc, this.negotiateOffer(uid, pc));
  }

  async negotiateOffer(uid, pc) {
    // One audio and one video m-line, both sendrecv, even audio-only: switching needs no renegotiation.
    pc.addTransceiver(this.track("audio") || "audio", { direction: "sendrecv", streams: [this.localStream] });
    const video = pc.addTransceiver(this.track("video") || "video", {
      direction: "sendrecv",
      streams: [this.localStream],
    });
    preferVideoCodec(video, this.settings.videoCodec);
    await pc.setLocalDescription(await pc.createOffer());
    const peer = this.peers.get(uid);
    if (this.active && peer?.pc === pc) {
      // The answer echoes it: an answer to an older offer is never applied to this connection.
      peer.negotiationId = Math.random().toString(36).slice(2, 14);
      peer.offeredAt = Date.now();
      if (!state.signaling) throw new CallsError("NETWORK", "not connected to the call server");
      await state.signaling.request("offer", {
        sessionId: this.sessionId,
        to: uid,
        sdp: pc.localDescription.sdp,
        negotiationId: peer.negotiationId,
      });
      this.described(uid, pc);
    }
  }

  answer(uid, sdp, negotiationId) {
    const current = this.peers.get(uid);
    // Both offered at once (a rebuild): the smaller uid's offer wins; the other drops its own and answers.
    if (current && !current.janus && current.pc.signalingState === "have-local-offer" && this.initiatesWith(uid))
      return Promise.resolve();
    if (!this.participants.has(uid)) this.participants.set(uid, { uid, name: uid });
    const { pc } = this.newPeer(uid);
    return this.unlessReplaced(uid, pc, this.negotiateAnswer(uid, pc, sdp, negotiationId));
  }

  async negotiateAnswer(uid, pc, sdp, negotiationId) {
    await pc.setRemoteDescription({ type: "offer", sdp });
    for (const transceiver of pc.getTransceivers()) {
      const kind = transceiver.receiver.track.kind;
      transceiver.direction = "sendrecv";
      if (kind === "video") preferVideoCodec(transceiver, this.settings.videoCodec);
      const track = this.track(kind);
      if (track) {
        await transceiver.sender.replaceTrack(track);
        transceiver.sender.setStreams(this.localStream);
      }
    }
    await pc.setLocalDescription(await pc.createAnswer());
    if (this.active && this.peers.get(uid)?.pc === pc) {
      const answer = { sessionId: this.sessionId, to: uid, sdp: pc.localDescription.sdp };
      if (negotiationId) answer.negotiationId = negotiationId;
      if (!state.signaling) throw new CallsError("NETWORK", "not connected to the call server");
      await state.signaling.request("answer", answer);
      this.described(uid, pc);
    }
  }

  async acceptAnswer(uid, sdp, negotiationId) {
    const peer = this.peers.get(uid);
    if (!peer || peer.pc.signalingState !== "have-local-offer") return;
    if (negotiationId && peer.negotiationId && negotiationId !== peer.negotiationId) return; // an older offer's
    await peer.pc.setRemoteDescription({ type: "answer", sdp });
  }

  // ---------------------------------------------------------------- group calls through the SFU

  // The session outgrew the mesh (or is past it already): close the mesh connections, publish our
  // media once into the room and subscribe to everyone else's there. Participants, events and the
  // layout stay as they were: each feed's stream goes to its publisher's tile.
  useSfu(room) {
    if (!room || !this.active) return;
    const same = this.sfuRoom && ["url", "room", "pin"].every((k) => this.sfuRoom[k] === room[k]);
    if (same && this.janus) return;
    this.sfuRoom = room;
    if (this.mediaMode !== "sfu") {
      this.mediaMode = "sfu";
      for (const uid of [...this.peers.keys()]) this.closePeer(uid);
      if (this.layout) this.layout.update();
    }
    this.guard(this.publishUntilDone(room));
  }

  async publishUntilDone(room) {
    let failures = 0;
    while (this.active && this.sfuRoom === room) {
      this.dropSfu();
      const janus = new JanusSession(room.url);
      this.janus = janus;
      janus.onlost = (err) => {
        if (!this.active || this.janus !== janus) return;
        this.error("SFU_UNAVAILABLE", `group call media server: ${err.message}; publishing again`);
        this.guard(this.publishUntilDone(room));
      };
      try {
        await this.publish(janus, room);
        return;
      } catch (err) {
        if (!this.active || this.janus !== janus) return;
        // Once per run of failures: the retries every second would otherwise flood the page.
        if (failures++ === 0) this.error("SFU_UNAVAILABLE", `group call media server: ${err.message}; retrying`);
        // No such room: Janus restarted and lost it; the call server makes a new one (session.media).
        if (err.janusCode === JANUS_NO_SUCH_ROOM)
          state.signaling?.request("sfu.lost", { sessionId: this.sessionId, room: room.room }).catch(() => {});
      }
      await sleep(SFU_RETRY_MS);
    }
  }

  async publish(janus, room) {
    await janus.create();
    const handle = await janus.attach((data) => this.onRoomEvent(janus, data));
    const { data: joined } = await janus.request(handle, {
      request: "join",
      ptype: "publisher",
      room: room.room,
      pin: room.pin,
      display: this.self.uid, // the name by which we and our feed are known to the others
    });
    janus.feed = joined.id;
    janus.privateId = joined.private_id ?? null;
    this.onPublishers(janus, joined.publishers || []);
    const pc = new RTCPeerConnection({ iceServers: this.iceServers });
    janus.pc = pc;
    pc.onconnectionstatechange = () => {
      if (pc.connectionState === "failed" && this.active && this.janus === janus)
        this.error("PEER_CONNECTION_FAILED", "media connection to the group call server failed");
    };
    // Audio and video lines even without a camera, as in the mesh: switching to video is a replaceTrack.
    pc.addTransceiver(this.track("audio") || "audio", { direction: "sendonly", streams: [this.localStream] });
    const video = pc.addTransceiver(this.track("video") || "video", {
      direction: "sendonly",
      streams: [this.localStream],
    });
    preferVideoCodec(video, this.settings.videoCodec);
    await pc.setLocalDescription(await pc.createOffer());
    await waitForGathering(pc);
    janus.check();
    const body = { request: "publish", audiocodec: "opus" };
    if (this.settings.videoCodec) body.videocodec = this.settings.videoCodec.toLowerCase();
    const { data, jsep } = await janus.request(handle, body, { type: "offer", sdp: pc.localDescription.sdp });
    if (jsep?.type !== "answer")
      throw new CallsError("SFU_ERROR", `Janus did not answer our offer: ${JSON.stringify(data)}`);
    await pc.setRemoteDescription(jsep);
  }

  dropSfu() {
    const janus = this.janus;
    this.janus = null;
    if (janus) janus.destroy(); // first: its handles then go with it, no detach each
    for (const [uid, peer] of [...this.peers]) if (peer.janus) this.closePeer(uid);
  }

  onRoomEvent(janus, data) {
    if (this.janus !== janus || !this.active) return;
    if (data.videoroom === "event") {
      this.onPublishers(janus, data.publishers || []);
      for (const key of ["unpublished", "leaving"]) if (key in data) this.onUnpublished(janus, data[key]);
    } else if (data.videoroom === "destroyed") {
      janus.lost(sfuUnavailable("the room was destroyed"));
    }
  }

  onPublishers(janus, publishers) {
    for (const p of publishers) {
      if (p.id === janus.feed || p.dummy) continue;
      const uid = String(p.display || p.id);
      const known = janus.publishers.get(p.id) === uid;
      janus.publishers.set(p.id, uid);
      if (!known) this.guard(this.subscribe(janus, p.id, uid));
    }
  }

  onUnpublished(janus, feed) {
    if (!janus.publishers.has(feed)) return; // "ok" (ourselves), or someone who never published
    janus.publishers.delete(feed);
    for (const [uid, peer] of [...this.peers]) if (peer.feed === feed) this.closePeer(uid);
    if (this.layout) this.layout.update();
  }

  // One receive-only connection per feed: Janus offers, we answer.
  async subscribe(janus, feed, uid) {
    const current = () => this.active && this.janus === janus && janus.publishers.get(feed) === uid;
    const handle = await janus.attach();
    const peer = { pc: null, stream: new MediaStream(), feed, handle, janus };
    const drop = () => {
      if (this.peers.get(uid) === peer) this.closePeer(uid);
      else {
        if (peer.pc) peer.pc.close();
        janus.detach(handle);
      }
    };
    try {
      const { room, pin } = this.sfuRoom;
      const body = { request: "join", ptype: "subscriber", room, pin, streams: [{ feed }] };
      if (janus.privateId !== null) body.private_id = janus.privateId;
      const { data, jsep } = await janus.request(handle, body);
      if (jsep?.type !== "offer")
        throw new CallsError("SFU_ERROR", `Janus sent no offer for ${uid}: ${JSON.stringify(data)}`);
      if (!current()) {
        drop(); // ended, republished, or that publisher left meanwhile
        return;
      }
      const pc = new RTCPeerConnection({ iceServers: this.iceServers });
      peer.pc = pc;
      pc.ontrack = (event) => {
        peer.stream.addTrack(event.track);
        if (this.layout) this.layout.update();
      };
      pc.onconnectionstatechange = () => {
        if (pc.connectionState !== "failed" || this.peers.get(uid) !== peer || !this.active) return;
        this.error("PEER_CONNECTION_FAILED", `media connection to ${uid} (through the group call server) failed`);
        setTimeout(() => {
          if (this.peers.get(uid) === peer && current()) this.guard(this.subscribe(janus, feed, uid));
        }, SFU_RESUBSCRIBE_MS);
      };
      await pc.setRemoteDescription(jsep);
      for (const transceiver of pc.getTransceivers()) transceiver.direction = "recvonly";
      await pc.setLocalDescription(await pc.createAnswer());
      await waitForGathering(pc);
      if (!current()) {
        drop();
        return;
      }
      // The tile of that participant shows this stream from now on, as a mesh connection's.
      this.closePeer(uid);
      this.peers.set(uid, peer);
      if (this.layout) this.layout.update();
      await janus.request(handle, { request: "start" }, { type: "answer", sdp: pc.localDescription.sdp });
    } catch (err) {
      drop();
      if (current()) throw err;
    }
  }

  emitMuted(p) {
    this.emit("onUserMuted", {
      muted: p,
      uid: p.uid,
      name: p.name,
      audioMuted: !!p.audioMuted,
      videoMuted: !!p.videoMuted,
    });
  }

  handle(message) {
    if (!this.active) return;
    switch (message.type) {
      case "participant.joined": {
        const p = message.participant;
        const known = this.participants.has(p.uid);
        this.updateParticipant(p);
        // A participant that comes back (rejoin after its network or the server dropped) is the
        // same participant: no second join event; its connection is rebuilt if its media stopped.
        if (known) this.rebuildIfBroken(p.uid, !!message.rejoined);
        break;
      }
      case "participant.left":
        this.participantLeft(message.participant.uid, message.participant);
        break;
      case "session.ended":
        this.teardown(message.reason || "ended");
        return;
      case "session.media":
        if (message.media?.mode === "sfu") this.useSfu(message.media.sfu);
        break;
      case "offer":
        // Through the SFU, offers and answers between participants are a mesh negotiation overtaken by the switch.
        if (this.mediaMode !== "sfu") this.guard(this.answer(message.from, message.sdp, message.negotiationId));
        break;
      case "answer":
        if (this.mediaMode !== "sfu") this.guard(this.acceptAnswer(message.from, message.sdp, message.negotiationId));
        break;
      case "candidate":
        // One for a connection since replaced fails to apply: that costs nothing, so no error shows.
        if (this.mediaMode !== "sfu" && message.candidate && this.peers.has(message.from))
          this.peers
            .get(message.from)
            .pc.addIceCandidate(message.candidate)
            .catch((err) => console.debug("candidate not applied", err));
        break;
      case "media.state": {
        const p = this.participants.get(message.user.uid);
        if (p) {
          p.audioMuted = !!message.audioMuted;
          p.videoMuted = !!message.videoMuted;
          this.emitMuted(p);
        }
        break;
      }
      case "switch.video":
        this.becomeVideo().then(() =>
          this.emit("onCallSwitchedToVideo", { requestedBy: message.requestedBy, sessionId: this.sessionId }),
        );
        break;
      case "door.opened":
        // A door kiosk in this call answered a request (ours or another's): released, or why not.
        this.emit("onDoorOpened", {
          door: message.door,
          openedBy: message.by,
          opened: !!message.opened,
          reason: message.reason || "",
          at: message.at,
        });
        break;
      case "recording":
        this.emit("onRecordingToggled", { recording: message.recording, user: message.user, at: message.at });
        break;
      default:
        break;
    }
    if (this.layout) this.layout.update();
    this.resetIdleTimer();
  }

  async becomeVideo() {
    if (!this.audioOnly) return;
    this.audioOnly = false;
    try {
      const stream = await navigator.mediaDevices.getUserMedia({ video: true });
      const track = stream.getVideoTracks()[0];
      this.localStream.addTrack(track);
      track.enabled = !this.videoMuted;
      await this.replaceTrack("video", track);
    } catch (err) {
      const [code, message] = mediaErrorMessage(err);
      this.error(code, message);
    }
    if (this.layout) this.layout.update();
  }

  async replaceTrack(kind, track) {
    // Mesh connections, or our one publisher connection to the SFU (its subscriptions only receive).
    const pcs = [...this.peers.values()].filter((peer) => !peer.janus).map((peer) => peer.pc);
    if (this.janus?.pc) pcs.push(this.janus.pc);
    for (const pc of pcs) {
      for (const t of pc.getTransceivers()) {
        if (t.receiver.track.kind === kind) await t.sender.replaceTrack(track);
      }
    }
  }

  sendMediaState() {
    if (!this.active || !state.signaling) return;
    state.signaling
      .request("media.state", { sessionId: this.sessionId, audioMuted: this.audioMuted, videoMuted: this.videoMuted })
      .catch((err) => this.error(err.code, err.message));
  }

  // The documents' idle timeout: alone in the call for this long ends the session, with a warning
  // IDLE_WARNING_SECONDS before (onSessionTimeoutWarning(secondsLeft), as the Python SDK's
  // on_session_timeout_warning; a period no longer than the warning warns at once). stay() starts over.
  resetIdleTimer() {
    clearTimeout(this.idleTimer);
    this.idleTimer = null;
    const seconds = this.settings.idleTimeoutSeconds;
    if (!this.active || this.participants.size || !(seconds > 0)) return;
    const warnAfter = Math.max(0, seconds - IDLE_WARNING_SECONDS);
    this.idleTimer = setTimeout(() => {
      this.emit("onSessionTimeoutWarning", Math.round(seconds - warnAfter));
      this.idleTimer = setTimeout(() => {
        this.emit("onSessionTimeout");
        endSession();
      }, (seconds - warnAfter) * 1000);
    }, warnAfter * 1000);
  }

  stay() {
    if (this.idleTimer !== null) this.resetIdleTimer();
  }

  async leave() {
    if (this.active && state.signaling) {
      try {
        await state.signaling.request("leave", { sessionId: this.sessionId });
      } catch {
        // leaving is best effort: the server also removes us when the socket closes
      }
    }
    this.teardown(null);
  }

  teardown(reason) {
    if (this.ended) return;
    this.ended = true;
    this.active = false;
    clearTimeout(this.idleTimer);
    clearTimeout(this.graceTimer);
    clearInterval(this.probeTimer);
    clearInterval(this.watchTimer);
    this.sfuRoom = null;
    this.dropSfu();
    for (const uid of [...this.peers.keys()]) this.closePeer(uid);
    for (const track of this.localStream.getTracks()) track.stop();
    if (this.cameraTrack) this.cameraTrack.stop(); // put aside by a screen share
    if (this.layout) this.layout.destroy();
    if (state.session === this) state.session = null;
    if (reason === null) return; // our own endSession
    // Ended by the other side or the server. onCallEnded is for a 1:1 call (the documents): a hangup
    // (the server sends it only for one), a session we could not get back into, or an end for all
    // with one other in it. In a group, or at logout, the others are gone: each is a user who left.
    const others = [...this.participants.values()];
    const oneToOne = reason === "hangup" || reason === "lost" || (reason === "ended" && others.length === 1);
    if (oneToOne) this.emit("onCallEnded");
    else for (const participant of others) this.emit("onUserLeft", participant);
  }
}

/** Join a session with a call token (a string, or the object generateToken resolves with). */
export async function startSession(callToken, callSettings, htmlElement) {
  if (state.reconnecting) throw new CallsError("NETWORK", "reconnecting to the call server; try again");
  if (!state.signaling) throw new CallsError("NOT_LOGGED_IN", "call login(authToken) first");
  if (state.session) throw new CallsError("ALREADY_IN_SESSION", "a session is already running");
  const token = typeof callToken === "string" ? callToken : callToken.token;
  const sessionId = sessionOfToken(token);
  const settings = callSettings || new CallSettingsBuilder().build();
  const session = new Session(sessionId, settings, htmlElement || null);
  state.session = session;
  try {
    await session.captureMedia();
    if (session.ended) return;
    await session.join(token);
  } catch (err) {
    session.teardown(null);
    session.emit("onError", { code: err.code || "INTERNAL", message: err.message });
    throw err;
  }
}

function sessionOfToken(token) {
  try {
    const payload = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(payload)).sid;
  } catch {
    throw new CallsError("TOKEN_INVALID", "malformed call token");
  }
}

export async function endSession() {
  const session = state.session;
  if (session) await session.leave();
}

/** Starts the idle countdown over: the "stay" answer to onSessionTimeoutWarning (as Python's stay()). */
export function stay() {
  activeSession("stay").stay();
}

/** Whether a call session is running (kiosk addition, as Python's `calls.session is not None`). */
export const inSession = () => !!state.session && state.session.active;

function activeSession(method) {
  if (!state.session) throw new CallsError("NO_ACTIVE_SESSION", `${method}() needs an active call session`);
  return state.session;
}

export function muteAudio(muted) {
  const s = activeSession("muteAudio");
  s.audioMuted = !!muted;
  s.applyMute();
  s.sendMediaState();
}

export function pauseVideo(paused) {
  const s = activeSession("pauseVideo");
  s.videoMuted = !!paused;
  s.applyMute();
  s.sendMediaState();
}

export function switchToVideoCall() {
  const s = activeSession("switchToVideoCall");
  if (state.signaling)
    state.signaling.request("switch.video", { sessionId: s.sessionId }).catch((err) => s.error(err.code, err.message));
  return s.becomeVideo();
}

/** Whether the server lets this user ask a door kiosk in its call to open (as of sign-in). */
export function canOpenDoors() {
  return !!state.canOpenDoors;
}

/** The participants of the active call that drive a door (a door kiosk). */
export function doors() {
  const s = state.session;
  if (!s || !s.active) return [];
  return [...s.participants.values()].filter((p) => p.door).map((p) => ({ uid: p.uid, name: p.name }));
}

/** Ask the door kiosk `uid` in the active call (default: the only one) to release its door. Resolves
 * once the server passed the request on; the answer comes to everyone as onDoorOpened. */
export async function openDoor(uid) {
  const s = activeSession("openDoor");
  const found = doors();
  const target = uid || (found.length === 1 ? found[0].uid : null);
  if (!target) throw new CallsError("NO_DOOR", found.length ? "several doors in this call: name one" : "nobody in this call has a door");
  if (!state.signaling) throw new CallsError("CONNECTION_LOST", "not connected to the call server");
  const bytes = crypto.getRandomValues(new Uint8Array(18));
  const nonce = btoa(String.fromCharCode(...bytes)).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  await state.signaling.request("door.open", { sessionId: s.sessionId, to: target, nonce });
}

export function setMode(mode) {
  const s = activeSession("setMode");
  s.mode = checkMode(mode);
  if (s.layout) s.layout.update();
}

export function isAudioMuted() {
  return !!state.session?.audioMuted;
}
export function isVideoPaused() {
  return !!state.session?.videoMuted;
}
/** The next camera of the browser's video inputs, round the list (none or one: nothing changes). */
export async function switchCamera() {
  const s = activeSession("switchCamera");
  if (s.audioOnly || s.screenTrack) return;
  const cameras = await getVideoInputDevices();
  if (cameras.length < 2) return;
  const current = s.track("video")?.getSettings().deviceId ?? state.videoInputId;
  const at = cameras.findIndex((d) => d.deviceId === current);
  await setVideoInputDevice(cameras[(at + 1) % cameras.length].deviceId);
}

/** Send the screen (getDisplayMedia) in place of the camera, until stopScreenShare() or the browser's
 * own "stop sharing"; onScreenShareStarted / onScreenShareStopped. */
export async function startScreenShare() {
  const s = activeSession("startScreenShare");
  if (s.screenTrack) return;
  if (!navigator.mediaDevices?.getDisplayMedia) {
    throw new CallsError("NOT_SUPPORTED", "this browser cannot share its screen");
  }
  let stream;
  try {
    stream = await navigator.mediaDevices.getDisplayMedia({ video: true, audio: false });
  } catch (err) {
    const [code, message] = mediaErrorMessage(err);
    s.error(code, message);
    throw new CallsError(code, message);
  }
  const screen = stream.getVideoTracks()[0];
  if (s.ended || !screen) {
    for (const track of stream.getTracks()) track.stop();
    return;
  }
  const camera = s.track("video");
  if (camera) s.localStream.removeTrack(camera);
  s.cameraTrack = camera; // kept live, to come back to
  s.screenTrack = screen;
  s.localStream.addTrack(screen);
  screen.addEventListener("ended", () => stopScreenShare()); // the browser's own "Stop sharing"
  s.applyMute();
  await s.replaceTrack("video", screen);
  if (s.layout) s.layout.update();
  s.emit("onScreenShareStarted");
}

export async function stopScreenShare() {
  const s = state.session;
  if (!s || !s.screenTrack) return;
  const screen = s.screenTrack;
  const camera = s.cameraTrack;
  s.screenTrack = s.cameraTrack = null;
  s.localStream.removeTrack(screen);
  screen.stop();
  if (camera && camera.readyState === "live" && !s.ended) {
    s.localStream.addTrack(camera);
    s.applyMute();
    await s.replaceTrack("video", camera);
  } else {
    await s.replaceTrack("video", null);
  }
  if (s.layout) s.layout.update();
  s.emit("onScreenShareStopped");
}

// ------------------------------------------------------------------ devices

async function devicesOf(kind) {
  if (!navigator.mediaDevices?.enumerateDevices) return [];
  return (await navigator.mediaDevices.enumerateDevices()).filter((d) => d.kind === kind);
}

export const getAudioInputDevices = () => devicesOf("audioinput");
export const getAudioOutputDevices = () => devicesOf("audiooutput");
export const getVideoInputDevices = () => devicesOf("videoinput");

async function switchInput(kind, deviceId) {
  const s = state.session;
  if (!s || s.ended) return;
  const old = s.track(kind);
  if (kind === "video" && s.audioOnly) return;
  try {
    const stream = await navigator.mediaDevices.getUserMedia({ [kind]: { deviceId: { exact: deviceId } } });
    const track = stream.getTracks()[0];
    if (old) {
      s.localStream.removeTrack(old);
      old.stop();
    }
    s.localStream.addTrack(track);
    s.applyMute();
    await s.replaceTrack(kind, track);
  } catch (err) {
    const [code, message] = mediaErrorMessage(err);
    s.error(code, message);
  }
}

export function setAudioInputDevice(deviceId) {
  state.audioInputId = deviceId;
  return switchInput("audio", deviceId);
}
export function setVideoInputDevice(deviceId) {
  state.videoInputId = deviceId;
  return switchInput("video", deviceId);
}
export async function setAudioOutputDevice(deviceId) {
  state.audioOutputId = deviceId;
  for (const el of document.querySelectorAll("audio[data-calls], video[data-calls]"))
    if (el.setSinkId) await el.setSinkId(deviceId).catch(() => {});
}

if (navigator.mediaDevices) {
  navigator.mediaDevices.addEventListener?.("devicechange", async () => {
    if (!state.session) return;
    state.session.emit("onMediaDeviceListUpdated", await navigator.mediaDevices.enumerateDevices());
  });
}

// ------------------------------------------------------------------ stats

/** Per remote participant: what this browser received (from getStats), for tests and diagnostics. */
export async function getSessionStats() {
  const s = state.session;
  if (!s) return null;
  const result = { sessionId: s.sessionId, mediaMode: s.mediaMode, room: s.sfuRoom?.room ?? null, participants: {} };
  const publisher = s.janus?.pc;
  if (publisher) {
    // Through the SFU: what our one publisher connection sends.
    result.publisher = { connectionState: publisher.connectionState, bytesSent: 0, videoFramesEncoded: 0 };
    (await publisher.getStats()).forEach((r) => {
      if (r.type !== "outbound-rtp") return;
      result.publisher.bytesSent += r.bytesSent || 0;
      if (r.kind === "video") result.publisher.videoFramesEncoded = r.framesEncoded || 0;
    });
  }
  for (const [uid, { pc }] of s.peers) {
    const entry = {
      connectionState: pc.connectionState,
      videoFramesDecoded: 0,
      audioEnergy: 0,
      audioLevel: 0,
      audioPacketsReceived: 0,
      bytesSent: 0,
    };
    const report = await pc.getStats();
    report.forEach((r) => {
      // The pair ICE chose, as "address:port (type)" each side: shows loopback, LAN or relay at a glance.
      if (r.type === "transport" && r.selectedCandidatePairId) {
        const pair = report.get(r.selectedCandidatePairId);
        const describe = (id) => {
          const c = id && report.get(id);
          return c ? `${c.address}:${c.port} (${c.candidateType})` : null;
        };
        if (pair) {
          entry.localCandidate = describe(pair.localCandidateId);
          entry.remoteCandidate = describe(pair.remoteCandidateId);
        }
      }
      if (r.type === "inbound-rtp" && r.kind === "video") {
        entry.videoFramesDecoded = r.framesDecoded || 0;
        const codec = r.codecId && report.get(r.codecId);
        if (codec) entry.videoCodecReceived = codec.mimeType;
      }
      if (r.type === "outbound-rtp" && r.kind === "video") {
        entry.videoFramesEncoded = r.framesEncoded || 0;
        const codec = r.codecId && report.get(r.codecId);
        if (codec) entry.videoCodecSent = codec.mimeType;
      }
      if (r.type === "inbound-rtp" && r.kind === "audio") {
        entry.audioEnergy = r.totalAudioEnergy || 0;
        entry.audioLevel = r.audioLevel || 0;
        entry.audioPacketsReceived = r.packetsReceived || 0;
      }
      if (r.type === "outbound-rtp") entry.bytesSent += r.bytesSent || 0;
    });
    entry.localSdp = pc.localDescription ? pc.localDescription.sdp : null;
    result.participants[uid] = entry;
  }
  return result;
}

// ------------------------------------------------------------------ the default layout

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

class DefaultLayout {
  constructor(session, container) {
    this.session = session;
    this.root = el("div", "calls-layout");
    this.grid = el("div", "calls-grid");
    this.controls = el("div", "calls-controls");
    this.tiles = new Map();
    this.root.append(this.grid, this.controls);
    container.append(this.root);
    const settings = session.settings;
    this.buttons = {};
    const add = (name, label, show, action) => {
      if (!show) return;
      const button = el("button", `calls-${name}`, label);
      button.type = "button";
      button.dataset.action = name;
      button.addEventListener("click", action);
      this.controls.append(button);
      this.buttons[name] = button;
    };
    add("mute", "Mute", settings.showMuteAudioButton, () => muteAudio(!session.audioMuted));
    add("video", "Stop video", settings.showPauseVideoButton, () => pauseVideo(!session.videoMuted));
    add("mode", "Spotlight", settings.showModeButton, () =>
      setMode(session.mode === CALL_MODE.DEFAULT ? CALL_MODE.SPOTLIGHT : CALL_MODE.DEFAULT));
    add("switch", "Switch to video", settings.showSwitchToVideoCallButton, () => switchToVideoCall());
    add("share", "Share screen", settings.showScreenShareButton && !!navigator.mediaDevices?.getDisplayMedia, () =>
      (session.screenTrack ? stopScreenShare() : startScreenShare()).catch(() => {}));
    add("end", "End", settings.showEndCallButton, () => {
      const wants = [settings.listener, ...state.sessionListeners.values()].some(
        (l) => l && typeof l.onCallEndButtonPressed === "function");
      session.emit("onCallEndButtonPressed");
      // With nobody to handle the button, it ends the session (the documents' session-only flow).
      if (!wants) endSession();
    });
    this.container = settings.mainVideoContainer || new MainVideoContainerSetting();
    this.zoomed = false;
    this.userList = null;
    this.root.style.position = "relative";
    this.corners = {};
    const corner = (name, label, params, action) => {
      if (!params.visible) return;
      let group = this.corners[params.position];
      if (!group) {
        group = this.corners[params.position] = el("div", "calls-corner");
        group.dataset.corner = params.position;
        const [vertical, horizontal] = params.position.split("-");
        Object.assign(group.style, { position: "absolute", display: "flex", gap: ".3rem", zIndex: "2",
                                     [vertical]: vertical === "top" ? ".5rem" : "4rem", [horizontal]: ".5rem" });
        this.root.append(group);
      }
      const button = el("button", `calls-${name}`, label);
      button.type = "button";
      button.dataset.action = name;
      button.addEventListener("click", action);
      group.append(button);
      this.buttons[name] = button;
    };
    corner("zoom", "Zoom", this.container.zoomButton, () => this.toggleZoom());
    corner("users", "People", this.container.userListButton, () => this.toggleUserList());
    corner("fullscreen", "Full screen", this.container.fullScreenButton, () => this.toggleFullScreen());
  }

  fit() {
    const fit = this.container.aspectRatio;
    return this.zoomed ? (fit === ASPECT_RATIO.CONTAIN ? ASPECT_RATIO.COVER : ASPECT_RATIO.CONTAIN) : fit;
  }

  toggleZoom() {
    this.zoomed = !this.zoomed;
    this.buttons.zoom.textContent = this.zoomed ? "Fit" : "Zoom";
    this.update();
  }

  toggleUserList() {
    if (this.userList) {
      this.userList.remove();
      this.userList = null;
      return;
    }
    this.userList = el("ul", "calls-userlist");
    Object.assign(this.userList.style, { position: "absolute", left: "50%", top: "30%", transform: "translateX(-50%)",
                                         zIndex: "3", background: "#222e", color: "#fff", padding: ".8rem 1.5rem",
                                         listStyle: "none", borderRadius: "6px" });
    this.root.append(this.userList);
    this.update();
  }

  // Full screen: the browser's, where it allows it (a click is a user gesture), and the controls
  // hidden either way; the corner buttons stay, to come back.
  toggleFullScreen() {
    const on = !this.root.classList.contains("calls-full");
    this.root.classList.toggle("calls-full", on);
    this.controls.style.display = on ? "none" : "";
    this.buttons.fullscreen.textContent = on ? "Exit full screen" : "Full screen";
    if (on && this.root.requestFullscreen) this.root.requestFullscreen().catch(() => {});
    else if (!on && document.fullscreenElement) document.exitFullscreen().catch(() => {});
  }

  tile(uid, name, isLocal) {
    let tile = this.tiles.get(uid);
    if (!tile) {
      const node = el("div", `calls-tile${isLocal ? " calls-local" : ""}`);
      node.dataset.uid = uid;
      const video = el("video");
      video.autoplay = true;
      video.playsInline = true;
      video.muted = isLocal; // never play our own microphone back
      video.dataset.calls = "";
      const label = el("div", "calls-name");
      const badges = el("div", "calls-badges");
      node.append(video, label, badges);
      this.grid.append(node);
      tile = { node, video, label, badges };
      this.tiles.set(uid, tile);
      if (!isLocal && state.audioOutputId && video.setSinkId) video.setSinkId(state.audioOutputId).catch(() => {});
    }
    tile.label.textContent = isLocal ? `${name} (you)` : name;
    return tile;
  }

  update() {
    const s = this.session;
    const seen = new Set();
    const show = (uid, name, stream, audioMuted, videoMuted, isLocal) => {
      seen.add(uid);
      const tile = this.tile(uid, name, isLocal);
      if (tile.video.srcObject !== stream) tile.video.srcObject = stream;
      if (!isLocal) this.placeLabel(tile);
      const badges = [];
      if (audioMuted) badges.push("MUTED");
      if (videoMuted || s.audioOnly) badges.push("VIDEO OFF");
      tile.badges.replaceChildren(...badges.map((b) => el("span", "calls-badge", b)));
      tile.node.classList.toggle("calls-video-off", !!(videoMuted || s.audioOnly));
    };
    const self = s.self || state.user || { uid: "self", name: "You" };
    show(self.uid, self.name, s.localStream, s.audioMuted, s.videoMuted, true);
    for (const p of s.participants.values()) {
      const peer = s.peers.get(p.uid);
      show(p.uid, p.name || p.uid, peer ? peer.stream : null, p.audioMuted, p.videoMuted, false);
    }
    for (const [uid, tile] of this.tiles) {
      if (!seen.has(uid)) {
        tile.node.remove();
        this.tiles.delete(uid);
      }
    }
    this.root.dataset.mode = s.mode;
    if (this.userList) {
      this.userList.replaceChildren(...s.userList().map((u) =>
        el("li", "", u.uid === self.uid ? `${u.name || u.uid} (you)` : u.name || u.uid)));
    }
    if (this.buttons.mute) this.buttons.mute.textContent = s.audioMuted ? "Unmute" : "Mute";
    if (this.buttons.video) this.buttons.video.textContent = s.videoMuted ? "Start video" : "Stop video";
    if (this.buttons.share) this.buttons.share.textContent = s.screenTrack ? "Stop sharing" : "Share screen";
    if (this.buttons.mode) this.buttons.mode.textContent = s.mode === CALL_MODE.DEFAULT ? "Spotlight" : "Grid";
    if (this.buttons.switch) this.buttons.switch.hidden = !s.audioOnly;
  }

  // The settings' fit and name label on a remote tile.
  placeLabel(tile) {
    tile.video.style.objectFit = this.fit();
    const { position, visible, backgroundColor } = this.container.nameLabel;
    const [vertical, horizontal] = position.split("-");
    Object.assign(tile.label.style, { top: "auto", bottom: "auto", left: "auto", right: "auto",
                                      [vertical]: ".5rem", [horizontal]: ".5rem", background: backgroundColor });
    tile.label.hidden = !visible;
    // The mute badges sit top right; a label there pushes them to the left.
    Object.assign(tile.badges.style, position === POSITION.TOP_RIGHT ? { left: ".5rem", right: "auto" } : { left: "", right: "" });
  }

  destroy() {
    for (const tile of this.tiles.values()) tile.video.srcObject = null;
    if (document.fullscreenElement === this.root) document.exitFullscreen().catch(() => {});
    this.root.remove();
  }
}
