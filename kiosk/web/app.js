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
// Answers that came over the WebSocket before the POST that rang the call returned (a fast kiosk).
const earlyAnswers = new Map();

window.kioskCalls = Calls; // for diagnostics and the end-to-end test

function show(...names) {
  for (const name of SECTIONS) $(name).hidden = !names.includes(name);
}

function say(text, isError = false) {
  const box = $("message");
  box.textContent = text || "";
  box.hidden = !text;
  box.classList.toggle("error", !!isError);
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

function signOut() {
  clearInterval(usersTimer);
  sessionStorage.removeItem("kiosk-token");
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
    say(describe(err), true);
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
  show("lobby");
  await Calls.rejectCall(call.sessionId, "rejected").catch((err) => say(describe(err), true));
}

async function startCall(call) {
  current = call;
  $("call-warning").hidden = true;
  show("call");
  say("Connecting…");
  const listener = new Calls.OngoingCallListener({
    onUserJoined: (user) => say(`${user.name} joined.`),
    onUserLeft: (user) => say(`${user.name} left.`),
    onCallEnded: () => callOver("The call has ended."),
    onCallEndButtonPressed: () => hangUp(),
    onError: (error) => {
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
    .build();
  try {
    const token = await Calls.generateToken(call.sessionId);
    await Calls.startSession(token.token, settings, $("call-screen"));
    if (current === call && $("message").textContent === "Connecting…") say("");
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
    $("incoming-name").textContent = call.initiator.name;
    $("incoming-type").textContent = call.type === "audio" ? "audio call" : "video call";
    show("lobby", "incoming");
  },
  onIncomingCallCancelled(call) {
    if (ringing?.sessionId !== call.sessionId) return;
    ringing = null;
    say(`Missed call from ${call.initiator.name}.`);
    show("lobby");
  },
  onOutgoingCallAccepted: onOutgoingAnswer,
  onOutgoingCallRejected: onOutgoingAnswer,
  onCallEndedMessageReceived(call) {
    if (current?.sessionId === call.sessionId) Calls.endSession().then(() => callOver("The call has ended."));
  },
  onConnectionLost() {
    say("Lost the connection to the call server. Sign in again.", true);
    if (current) callOver("Lost the connection to the call server.", true);
    signOut();
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
$("audio-only").addEventListener("change", refreshUsers);

// A link may carry the token (?token=...): take it, then drop it from the address bar and history.
const params = new URLSearchParams(window.location.search);
const linkToken = params.get("token");
if (linkToken) {
  params.delete("token");
  const rest = params.toString();
  history.replaceState(null, "", window.location.pathname + (rest ? `?${rest}` : ""));
}
const token = linkToken || sessionStorage.getItem("kiosk-token");
if (token) signIn(token);
else show("signin");
