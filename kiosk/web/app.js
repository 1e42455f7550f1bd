// The page: sign in, see who is online, call or answer, and the call screen (calls.js's default layout).
import * as Calls from "./calls.js";

const $ = (id) => document.getElementById(id);
const SECTIONS = ["signin", "lobby", "incoming", "outgoing", "call"];
const USERS_REFRESH_MS = 3000;
// Device problems stay on screen for the whole call, not overwritten by "X joined" and the like.
const DEVICE_ERRORS = new Set(["MEDIA_PERMISSION_DENIED", "DEVICE_NOT_FOUND", "DEVICE_BUSY", "MEDIA_ERROR"]);

let me = null;
let ringing = null; // the Call ringing here (incoming) or there (outgoing)
let current = null; // the Call whose session is on screen
let usersTimer = null;
let videoCodec = null; // from the link's ?codec=, see below
// Answers that came over the WebSocket before the POST that rang the call returned (a fast kiosk).
const earlyAnswers = new Map();

window.kioskCalls = Calls; // for diagnostics and the end-to-end test

// The ringtone of an incoming call: a WebAudio oscillator with a ring cadence (two 0.4 s bursts, 2 s pause).
// While it runs, <body data-ringtone="on"> says so ("silent" without WebAudio), for styling and the tests.
const RING_HZ = [400, 450];
const RING_PERIOD_MS = 3000;
const ringtone = {
  context: null,
  timer: null,
  oscillators: new Set(),
  start() {
    if (this.timer) return;
    try {
      this.context = this.context || new AudioContext();
      this.context.resume().catch(() => {});
    } catch {
      this.context = null; // no WebAudio: ring silently, the screen still shows the call
    }
    const burst = () => {
      const ctx = this.context;
      if (!ctx) return;
      const gain = ctx.createGain();
      gain.gain.value = 0.15;
      gain.connect(ctx.destination);
      const now = ctx.currentTime;
      this.oscillators.clear(); // the last cadence's, all stopped by now
      for (const at of [0, 0.6]) {
        for (const hz of RING_HZ) {
          const osc = ctx.createOscillator();
          osc.frequency.value = hz;
          osc.connect(gain);
          osc.start(now + at);
          osc.stop(now + at + 0.4);
          this.oscillators.add(osc);
        }
      }
    };
    burst();
    this.timer = setInterval(burst, RING_PERIOD_MS);
    document.body.dataset.ringtone = this.context ? "on" : "silent";
  },
  stop() {
    clearInterval(this.timer);
    this.timer = null;
    for (const osc of this.oscillators) {
      try {
        osc.stop();
      } catch {
        // already stopped
      }
    }
    this.oscillators.clear();
    delete document.body.dataset.ringtone;
  },
};
window.kioskRingtone = ringtone; // for diagnostics and the end-to-end test

function show(...names) {
  for (const name of SECTIONS) $(name).hidden = !names.includes(name);
}

let messageTimer = null;
const NOTICE_MS = 4000;

// `notice`: a passing remark ("Kiosk joined.") that clears itself; errors and states stay until replaced.
function say(text, isError = false, notice = false) {
  const box = $("message");
  clearTimeout(messageTimer);
  messageTimer = null;
  box.textContent = text || "";
  box.hidden = !text;
  box.classList.toggle("error", !!isError);
  if (notice && text) messageTimer = setTimeout(() => say(""), NOTICE_MS);
}

function describe(err) {
  const reasons = {
    UNAUTHORIZED: "That auth token is not valid.",
    NETWORK: "The call server cannot be reached.",
    NOT_FOUND: "No such user.",
    FORBIDDEN: "You may not do that.",
    INVALID_STATE: "That call is already over.",
  };
  return reasons[err.code] || `${err.message || err} ${err.code ? `(${err.code})` : ""}`.trim();
}

async function signIn(token) {
  say("Signing in…");
  try {
    me = await Calls.login(token);
  } catch (err) {
    say(describe(err), true);
    show("signin");
    return;
  }
  sessionStorage.setItem("kiosk-token", token);
  $("me").textContent = `Signed in as ${me.name}`;
  say("");
  show("lobby");
  await refreshUsers();
  clearInterval(usersTimer);
  usersTimer = setInterval(refreshUsers, USERS_REFRESH_MS);
}

// A browser paired with a building host keeps its token across visits (the code was good once).
const pairedTokenKey = "kiosk-paired-token";

async function pairBrowser(code, name) {
  name = name || window.prompt("Your name, as the others will see it:", "") || "Browser";
  say("Pairing…");
  try {
    const response = await fetch("/v1/pair", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ code, name }),
    });
    const body = await response.json().catch(() => ({}));
    if (response.status !== 201) throw new Error(body.error?.message || `HTTP ${response.status}`);
    localStorage.setItem(pairedTokenKey, body.authToken);
    await signIn(body.authToken);
  } catch (err) {
    say(`Not paired: ${err.message || err}`, true);
    show("signin");
  }
}

function signOut() {
  ringtone.stop();
  $("connection").hidden = true;
  clearInterval(usersTimer);
  sessionStorage.removeItem("kiosk-token");
  localStorage.removeItem(pairedTokenKey);
  Calls.logout();
  me = null;
  $("me").textContent = "";
  show("signin");
}

async function refreshUsers() {
  if (!me) return;
  let users;
  try {
    users = await Calls.getUsers();
  } catch (err) {
    if ($("connection").hidden) say(describe(err), true); // while reconnecting, that banner says it
    return;
  }
  const list = $("users");
  list.replaceChildren(
    ...users
      .filter((u) => u.uid !== me.uid)
      .map((u) => {
        const li = document.createElement("li");
        li.dataset.uid = u.uid;
        li.className = u.online ? "online" : "offline";
        const name = document.createElement("span");
        name.textContent = u.name;
        const status = document.createElement("span");
        status.className = "status";
        status.textContent = u.online ? "online" : "offline";
        const button = document.createElement("button");
        button.type = "button";
        button.className = "call";
        button.textContent = "Call";
        button.disabled = !u.online || !!ringing || !!current;
        button.addEventListener("click", () => placeCall(u));
        li.append(name, status, button);
        return li;
      }),
  );
}

async function placeCall(user) {
  const type = $("audio-only").checked ? Calls.CALL_TYPE.AUDIO : Calls.CALL_TYPE.VIDEO;
  say("");
  let call;
  try {
    call = await Calls.initiateCall(user.uid, type);
  } catch (err) {
    say(describe(err), true);
    return;
  }
  if (call.status === "busy") {
    say(`${user.name} is busy in another call.`, true);
    return;
  }
  ringing = call;
  $("outgoing-name").textContent = user.name;
  show("lobby", "outgoing");
  const early = earlyAnswers.get(call.sessionId);
  earlyAnswers.clear();
  if (early) onOutgoingAnswer(early);
}

function onOutgoingAnswer(call) {
  if (ringing?.sessionId !== call.sessionId) {
    earlyAnswers.set(call.sessionId, call);
    return;
  }
  ringing = null;
  if (call.status === "ongoing") {
    startCall(call);
    return;
  }
  const texts = { rejected: "declined the call", busy: "is busy", unanswered: "did not answer" };
  say(`${call.receiver.name} ${texts[call.status] || call.status}.`, true);
  show("lobby");
}

async function cancelCall() {
  if (!ringing) return;
  const call = ringing;
  ringing = null;
  show("lobby");
  await Calls.rejectCall(call.sessionId, "cancelled").catch((err) => say(describe(err), true));
}

async function acceptIncoming() {
  if (!ringing) return;
  const call = ringing;
  ringing = null;
  ringtone.stop();
  try {
    await Calls.acceptCall(call.sessionId);
  } catch (err) {
    say(describe(err), true);
    show("lobby");
    return;
  }
  await startCall(call);
}

async function rejectIncoming() {
  if (!ringing) return;
  const call = ringing;
  ringing = null;
  ringtone.stop();
  show("lobby");
  await Calls.rejectCall(call.sessionId, "rejected").catch((err) => say(describe(err), true));
}

// ------------------------------------------------------------------ devices

const DEVICE_CHOICES = [
  { select: "device-mic", list: Calls.getAudioInputDevices, set: Calls.setAudioInputDevice },
  { select: "device-camera", list: Calls.getVideoInputDevices, set: Calls.setVideoInputDevice },
  { select: "device-speaker", list: Calls.getAudioOutputDevices, set: Calls.setAudioOutputDevice },
];
// The speaker can only be chosen where media elements have setSinkId (not in every browser).
const CAN_PICK_SPEAKER = typeof HTMLMediaElement !== "undefined" && "setSinkId" in HTMLMediaElement.prototype;

async function refreshDevices() {
  $("speaker-choice").hidden = !CAN_PICK_SPEAKER;
  for (const choice of DEVICE_CHOICES) {
    const select = $(choice.select);
    let devices = [];
    try {
      devices = await choice.list();
    } catch {
      // no device list: leave the choice empty
    }
    const chosen = select.value;
    select.replaceChildren(
      ...devices.map((d, i) => {
        const option = document.createElement("option");
        option.value = d.deviceId;
        option.textContent = d.label || `${d.kind} ${i + 1}`;
        return option;
      }),
    );
    if (devices.some((d) => d.deviceId === chosen)) select.value = chosen;
  }
}

for (const choice of DEVICE_CHOICES) {
  $(choice.select).addEventListener("change", (event) => {
    Promise.resolve(choice.set(event.target.value)).catch((err) => say(describe(err), true));
  });
}

// A picture element showing a JPEG Blob (null: hidden); the previous object URL is let go.
function showPicture(img, blob) {
  if (img.dataset.url) URL.revokeObjectURL(img.dataset.url);
  delete img.dataset.url;
  img.hidden = !blob;
  if (blob) {
    img.dataset.url = URL.createObjectURL(blob);
    img.src = img.dataset.url;
  } else img.removeAttribute("src");
}

// While a call rings here: its caller's stills, twice a second (who is at the door, before answering).
async function followCallerPicture(sessionId) {
  while (ringing?.sessionId === sessionId) {
    try {
      const blob = await Calls.getCallPicture(sessionId);
      if (blob && ringing?.sessionId === sessionId) showPicture($("incoming-picture"), blob);
    } catch (err) {
      console.debug("caller picture", err);
    }
    await new Promise((resolve) => setTimeout(resolve, 500));
  }
}

// A missed call: the caller as its kiosk saw them while it rang, beside the message.
async function showMissedPicture(sessionId) {
  try {
    showPicture($("missed-picture"), await Calls.getCallPicture(sessionId));
  } catch (err) {
    console.debug("missed-call picture", err);
  }
}

function showRecording(on) {
  $("call-recording").hidden = !on;
}

// "Open door" while a door kiosk is in the call and this user may open doors.
function refreshDoor() {
  $("door-bar").hidden = !(Calls.canOpenDoors() && Calls.doors().length > 0);
}

async function startCall(call) {
  current = call;
  showPicture($("missed-picture"), null);
  $("call-warning").hidden = true;
  $("door-bar").hidden = true;
  showRecording(false);
  show("call");
  say("Connecting…");
  const listener = new Calls.OngoingCallListener({
    onUserJoined: (user) => {
      $("call-idle").hidden = true;
      say(`${user.name} joined.`, false, true);
      refreshDoor();
    },
    onUserListUpdated: () => refreshDoor(),
    onDoorOpened: (result) => {
      if (result.opened) say(`${result.door.name} released (${result.openedBy.name}).`, false, true);
      else say(`The door was not released: ${result.reason || "no reason given"}.`, true);
    },
    onUserLeft: (user) => {
      refreshDoor();
      say(`${user.name} left.`, false, true);
      // A group call ended for everyone is no 1:1 onCallEnded: the others left, and the session is gone.
      if (current === call && !Calls.inSession()) callOver("The call has ended.");
    },
    onCallEnded: () => callOver("The call has ended."),
    onSessionTimeoutWarning: (secondsLeft) => {
      $("call-idle-text").textContent = `Nobody else is in the call: it ends in ${secondsLeft} s.`;
      $("call-idle").hidden = false;
    },
    onSessionTimeout: () => callOver("The call ended: nobody else was in it."),
    onCallEndButtonPressed: () => hangUp(),
    onRecordingToggled: (info) => showRecording(!!info.recording),
    onMediaDeviceListUpdated: () => refreshDevices(),
    onError: (error) => {
      if (error.code === "CONNECTION_LOST") return; // the "Reconnecting…" banner shows it
      if (!DEVICE_ERRORS.has(error.code)) {
        say(error.message, true);
        return;
      }
      $("call-warning").textContent = error.message;
      $("call-warning").hidden = false;
    },
  });
  const settings = new Calls.CallSettingsBuilder()
    .enableDefaultLayout(true)
    .setIsAudioOnlyCall(call.type === "audio")
    .setCallListener(listener)
    .setVideoCodec(videoCodec)
    .build();
  try {
    const token = await Calls.generateToken(call.sessionId);
    await Calls.startSession(token.token, settings, $("call-screen"));
    if (current === call && $("message").textContent === "Connecting…") say("");
    refreshDevices(); // after getUserMedia, so the devices have their names
  } catch (err) {
    callOver(describe(err), true);
  }
}

async function hangUp() {
  const call = current;
  if (!call) return;
  // Ringing flow: end the call for both users, then release our media.
  await Calls.endCall(call.sessionId).catch(() => {});
  await Calls.endSession();
  callOver("Call ended.");
}

function callOver(text, isError = false) {
  current = null;
  $("call-idle").hidden = true;
  showRecording(false);
  Calls.clearActiveCall();
  say(text, isError);
  show(me ? "lobby" : "signin");
  refreshUsers();
}

Calls.addCallListener("page", {
  onIncomingCallReceived(call) {
    if (current || ringing) {
      Calls.rejectCall(call.sessionId, "busy").catch(() => {});
      return;
    }
    ringing = call;
    ringtone.start();
    $("incoming-name").textContent = call.initiator.name;
    $("incoming-type").textContent = call.type === "audio" ? "audio call" : "video call";
    showPicture($("incoming-picture"), null);
    showPicture($("missed-picture"), null);
    followCallerPicture(call.sessionId);
    show("lobby", "incoming");
  },
  onIncomingCallCancelled(call) {
    if (ringing?.sessionId !== call.sessionId) return;
    ringing = null;
    ringtone.stop();
    if (!call.answeredBy) showMissedPicture(call.sessionId);
    if (call.answeredBy) say(`${call.initiator.name}'s call to ${call.receiver.name} was answered by ${call.answeredBy.name}.`);
    else say(`Missed call from ${call.initiator.name}.`);
    show("lobby");
  },
  onOutgoingCallAccepted: onOutgoingAnswer,
  onOutgoingCallRejected: onOutgoingAnswer,
  onCallEndedMessageReceived(call) {
    if (current?.sessionId === call.sessionId) Calls.endSession().then(() => callOver("The call has ended."));
  },
  // calls.js reconnects by itself (and keeps a call going meanwhile, within the server's rejoin grace).
  onConnectionLost() {
    $("connection").hidden = false;
  },
  onReconnected() {
    $("connection").hidden = true;
  },
  // The server no longer takes this page's token (revoked, or the user removed): sign in again.
  onSignedOut() {
    signOut();
    say("You were signed out: this auth token is no longer valid.", true);
  },
});

$("signin-form").addEventListener("submit", (event) => {
  event.preventDefault();
  signIn($("token").value.trim());
});
$("signout").addEventListener("click", signOut);
$("accept").addEventListener("click", acceptIncoming);
$("reject").addEventListener("click", rejectIncoming);
$("cancel").addEventListener("click", cancelCall);
$("open-door").addEventListener("click", () => {
  Calls.openDoor().catch((err) => say(describe(err), true));
});
$("call-stay").addEventListener("click", () => {
  $("call-idle").hidden = true;
  if (Calls.inSession()) Calls.stay();
});
$("audio-only").addEventListener("change", refreshUsers);

// A sign-in link carries the token in its fragment (#token=..., which a browser never sends to a
// server; the older ?token=... works too): take it, then drop it from the address bar and history.
const params = new URLSearchParams(window.location.search);
const fragment = new URLSearchParams(window.location.hash.slice(1));
// ?codec=H264 (or VP8): the video codec this page prefers in its calls.
try {
  videoCodec = new Calls.CallSettingsBuilder().setVideoCodec(params.get("codec")).build().videoCodec;
} catch (err) {
  say(describe(err), true);
}
const linkToken = fragment.get("token") || params.get("token");
// A building host's pairing link, #pair=CODE[&name=NAME] (docs/intercom.md): the one-time code from
// its screen, in the fragment too. Taken out of the address bar at once: it is used up by pairing.
const pairCode = fragment.get("pair");
const pairName = fragment.get("name");
if (linkToken || pairCode) {
  params.delete("token");
  for (const key of ["token", "pair", "name"]) fragment.delete(key);
  const query = params.toString();
  const hash = fragment.toString();
  history.replaceState(null, "", window.location.pathname + (query ? `?${query}` : "") + (hash ? `#${hash}` : ""));
}
const token = linkToken || sessionStorage.getItem("kiosk-token") || localStorage.getItem(pairedTokenKey);
if (pairCode) pairBrowser(pairCode, pairName);
else if (token) signIn(token);
else show("signin");
