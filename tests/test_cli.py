"""The `kiosk` command as a person uses it: server, users, two headless endpoints, and the demo."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

KIOSK = [sys.executable, "-m", "kiosk.cli"]
ADMIN_KEY = "cli-test-admin-key"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*KIOSK, *args], capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture
def server_process(tmp_path):
    port = _free_port()
    data = tmp_path / "data"
    env = {**os.environ, "KIOSK_ADMIN_KEY": ADMIN_KEY}
    proc = subprocess.Popen(
        [*KIOSK, "server", "--port", str(port), "--data-dir", str(data), "--ring-timeout", "20"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while True:
        try:
            urllib.request.urlopen(f"{url}/v1/me", timeout=1)
        except urllib.error.HTTPError:
            break  # 401: the server is up
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise AssertionError(
                    f"server did not start: {proc.stdout.read() if proc.stdout else ''}"
                ) from None
            time.sleep(0.1)
    yield url, data
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


def _add_user(data: Path, uid: str) -> str:
    done = _run("users", "add", uid, "--name", uid.title(), "--data-dir", str(data))
    assert done.returncode == 0, done.stderr
    token = done.stdout.strip()
    assert token and " " not in token
    return token


def _endpoint(url: str, token: str, *args: str, report: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            *KIOSK,
            "endpoint",
            "--server",
            url,
            "--auth-token",
            token,
            "--loopback",
            "--report",
            str(report),
            *args,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _lines(output: str) -> list[dict]:
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


def test_users_add_and_duplicate(server_process):
    _, data = server_process
    _add_user(data, "alice")
    again = _run("users", "add", "alice", "--name", "Alice", "--data-dir", str(data))
    assert again.returncode == 1
    assert "alice" in again.stderr and "Traceback" not in again.stderr
    listed = _run("users", "list", "--data-dir", str(data))
    assert listed.returncode == 0 and "alice" in listed.stdout


def test_two_endpoint_processes_join_one_session(server_process, tmp_path):
    url, data = server_process
    tokens = {uid: _add_user(data, uid) for uid in ("door", "desk")}
    procs = {
        uid: _endpoint(url, token, "--session", "lobby", "--duration", "4", report=tmp_path / f"{uid}.json")
        for uid, token in tokens.items()
    }
    outputs = {uid: proc.communicate(timeout=40) for uid, proc in procs.items()}
    for uid, proc in procs.items():
        out, err = outputs[uid]
        assert proc.returncode == 0, f"{uid}: {out}\n{err}"
        assert "Traceback" not in err
        report = json.loads((tmp_path / f"{uid}.json").read_text())
        assert report["ok"] is True
        (other,) = report["stats"]["participants"].values()
        assert other["video_frames_decoded"] > 10 and other["audio_frames_decoded"] > 10
        events = [line.get("event") for line in _lines(out)]
        assert "on_user_list_changed" in events


def test_endpoint_calls_and_another_answers(server_process, tmp_path):
    url, data = server_process
    caller, callee = _add_user(data, "gate"), _add_user(data, "office")
    answering = _endpoint(url, callee, "--answer", "--duration", "10", report=tmp_path / "office.json")
    time.sleep(1.5)  # let the answering endpoint log in before it is called
    calling = _endpoint(
        url, caller, "--call", "office", "--audio-only", "--duration", "3", report=tmp_path / "gate.json"
    )
    out_caller, err_caller = calling.communicate(timeout=40)
    out_callee, err_callee = answering.communicate(timeout=40)
    assert calling.returncode == 0, f"{out_caller}\n{err_caller}"
    assert answering.returncode == 0, f"{out_callee}\n{err_callee}"
    callee_events = [line.get("event") for line in _lines(out_callee)]
    assert "on_incoming_call_received" in callee_events and "on_call_ended" in callee_events
    report = json.loads((tmp_path / "gate.json").read_text())
    (office,) = report["stats"]["participants"].values()
    assert office["audio_frames_decoded"] > 10 and office["video_frames_decoded"] == 0


def test_endpoint_with_a_bad_token_says_so(server_process, tmp_path):
    url, _ = server_process
    proc = _endpoint(url, "wrong-token", "--session", "x", "--duration", "1", report=tmp_path / "r.json")
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 2
    assert any(line.get("data", {}).get("code") == "UNAUTHORIZED" for line in _lines(out))
    assert "Traceback" not in err


def test_demo_exits_zero_when_media_flows():
    done = _run("demo", "--duration", "2", timeout=90)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "demo: media flowed both ways" in done.stdout
    assert "front-door received from reception" in done.stdout


def test_recording_survives_a_crash(server_process, tmp_path):
    """The recording endpoint is killed mid-call (a power cut, a crash): its file still plays."""
    import signal

    import av

    url, data = server_process
    door, desk = _add_user(data, "door"), _add_user(data, "desk")
    recordings = tmp_path / "recordings"
    recorder = _endpoint(
        url,
        door,
        "--session",
        "hall",
        "--record",
        "--recording-dir",
        str(recordings),
        report=tmp_path / "d.json",
    )
    other = _endpoint(url, desk, "--session", "hall", "--duration", "20", report=tmp_path / "k.json")
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            files = list(recordings.glob("*.mkv"))
            if files and files[0].stat().st_size > 60_000:  # a few seconds of call on disk
                break
            time.sleep(0.2)
        else:
            raise AssertionError("the recording never grew")
        time.sleep(1.0)
        recorder.send_signal(signal.SIGKILL)
        recorder.wait(10)
    finally:
        other.kill()
        other.wait(10)
        recorder.kill()
    (path,) = recordings.glob("*.mkv")
    with av.open(str(path)) as container:
        video = sum(1 for _ in container.decode(video=0))
    with av.open(str(path)) as container:
        audio = sum(f.samples for f in container.decode(audio=0))
    assert video >= 15 and audio >= 48000, (video, audio)


def _socket_command(path: Path, command: str) -> str:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(str(path))
        s.sendall(command.encode() + b"\n")
        return s.makefile().readline().strip()


def test_an_idle_kiosk_is_driven_by_its_control_socket(server_process, tmp_path):
    """The emulated device with no Pi: answer, mute and hang up through the control socket."""
    url, data = server_process
    kiosk_token, caller_token = _add_user(data, "kiosk"), _add_user(data, "visitor")
    sock = tmp_path / "control.sock"
    config = tmp_path / "kiosk.toml"
    text = (Path(__file__).resolve().parent.parent / "config" / "emulated.toml").read_text()
    config.write_text(text.replace('control_socket = "kiosk-control.sock"', f'control_socket = "{sock}"'))
    kiosk = subprocess.Popen(
        [
            *KIOSK,
            "endpoint",
            "--config",
            str(config),
            "--server",
            url,
            "--auth-token",
            kiosk_token,
            "--idle",
            "--loopback",
            "--duration",
            "25",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    caller = None
    try:
        deadline = time.monotonic() + 20
        while not sock.exists():
            assert kiosk.poll() is None and time.monotonic() < deadline, (
                kiosk.stderr.read() if kiosk.stderr else ""
            )
            time.sleep(0.1)
        caller = _endpoint(
            url, caller_token, "--call", "kiosk", "--duration", "6", report=tmp_path / "v.json"
        )
        deadline = time.monotonic() + 15
        while json.loads(_socket_command(sock, "state"))["phase"] != "ringing_in":
            assert time.monotonic() < deadline, "the kiosk never rang"
            time.sleep(0.1)
        assert _socket_command(sock, "answer") == "ok"
        deadline = time.monotonic() + 15
        while json.loads(_socket_command(sock, "state"))["phase"] != "in_call":
            assert time.monotonic() < deadline, "not answered"
            time.sleep(0.1)
        time.sleep(1.0)
        assert _socket_command(sock, "mute") == "ok"
        assert json.loads(_socket_command(sock, "state"))["muted"] is True
        assert _socket_command(sock, "bogus").startswith("error")
        out, err = caller.communicate(timeout=40)
        assert caller.returncode == 0, out + err
        muted = [line for line in _lines(out) if line.get("event") == "on_user_muted"]
        assert muted and muted[0]["data"]["uid"] == "kiosk" and muted[0]["data"]["audio_muted"] is True
    finally:
        if caller is not None and caller.poll() is None:
            caller.kill()
        kiosk.terminate()
        kiosk.wait(15)
