"""`ivr-bridge call [URL]`: a command-line softphone for scripts.

Dials a running bridge the way Twilio does (bridge/tools/softphone.py), plays a WAV as the caller,
presses keys at given times, prints what happens on the line (the bot speaking, clears, the end of
the call, a transfer or a hang-up), optionally recognises what the bot said (pocketsphinx, locally)
and saves what the caller heard as a WAV file.

    ivr-bridge call http://127.0.0.1:8080 --play hello.wav --digits 1 --at 2.5s --save heard.wav
    ivr-bridge call --script calls/billing.txt --transcribe

A script has one action per line, `TIME ACTION`: `2.5s press 1`, `3s play hello.wav`,
`4s say what are your opening hours` (synthesized with the local voice), `20s hangup`; a line
starting with `#` and ` # words` after an action are comments (`press #` is the key).
Exit status: 0 when the call was connected, 1 when the bridge refused it, 2 on bad usage.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from bridge.dialplan.schema import parse_duration_ms
from bridge.errors import BridgeError, ConfigError
from bridge.settings import Settings
from bridge.tools.softphone import CallEvent, Softphone, SoftphoneError, read_wav_8k, recognise


@dataclass(frozen=True, slots=True)
class Action:
    at_s: float
    verb: str  # play, press, say, hangup
    arg: str = ""


def seconds(text: str) -> float:
    try:
        return parse_duration_ms(text.strip()) / 1000.0
    except ValueError as exc:
        raise ConfigError(f"{text!r}: expected a time like 2.5s, 500ms or 1m") from exc


def parse_script(text: str, source: str = "script", base: Path | None = None) -> list[Action]:
    """`TIME VERB [ARG]` lines -> actions (ConfigError naming the line when one is wrong)."""
    actions: list[Action] = []
    for number, raw in enumerate(text.splitlines(), 1):
        # Comments: a line starting with `#`, or ` # words` after an action (`press #` is a key).
        line = "" if raw.lstrip().startswith("#") else re.sub(r"\s#\s+\S.*$", "", raw).strip()
        if not line:
            continue
        parts = line.split(maxsplit=2)
        if len(parts) < 2:
            raise ConfigError(f"{source}:{number}: expected `TIME ACTION`, e.g. `2.5s press 1`")
        try:
            at = seconds(parts[0])
        except ConfigError as exc:
            raise ConfigError(f"{source}:{number}: {exc}") from exc
        verb, arg = parts[1].lower(), parts[2] if len(parts) > 2 else ""
        if verb not in ("play", "press", "say", "hangup"):
            raise ConfigError(
                f"{source}:{number}: unknown action {verb!r}; expected play, press, say, hangup"
            )
        if verb != "hangup" and not arg:
            raise ConfigError(f"{source}:{number}: `{verb}` needs an argument")
        if verb == "press" and not all(ch in "0123456789*#ABCD" for ch in arg):
            raise ConfigError(f"{source}:{number}: keys are 0-9 * # A-D, got {arg!r}")
        if verb == "play" and base is not None and not Path(arg).is_absolute():
            arg = str(base / arg)
        actions.append(Action(at, verb, arg))
    return sorted(actions, key=lambda a: a.at_s)


def actions_from_args(args: argparse.Namespace) -> list[Action]:
    actions: list[Action] = []
    if args.script:
        path = Path(args.script)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"--script {path}: {exc.strerror}") from exc
        actions += parse_script(text, str(path), base=path.parent)
    if args.play:
        actions.append(Action(seconds(args.play_at), "play", args.play))
    digits: list[str] = args.digits or []
    times: list[str] = args.at or []
    if len(times) > len(digits):
        raise ConfigError("--at without a --digits before it")
    for i, keys in enumerate(digits):
        if not all(ch in "0123456789*#ABCD" for ch in keys):
            raise ConfigError(f"--digits: keys are 0-9 * # A-D, got {keys!r}")
        at = seconds(times[i]) if i < len(times) else 1.0 + i
        actions.append(Action(at, "press", keys))
    return sorted(actions, key=lambda a: a.at_s)


async def _act(phone: Softphone, action: Action, out: TextIO, wavs: dict[str, bytes]) -> None:
    if action.verb == "press":
        print(f"{phone.now_s:7.2f}s  caller presses {action.arg}", file=out)
        await phone.press(action.arg)
    elif action.verb == "play":
        pcm = wavs[action.arg]
        print(f"{phone.now_s:7.2f}s  caller plays {action.arg} ({len(pcm) / 16000:.1f} s)", file=out)
        await phone.play(pcm)
    elif action.verb == "say":
        from bridge.speech.tts import Synthesizer

        def synth() -> bytes:
            import numpy as np

            return np.asarray(Synthesizer(out_rate=8000).synthesize(action.arg), dtype="<i2").tobytes()

        pcm = await asyncio.get_running_loop().run_in_executor(None, synth)
        print(f'{phone.now_s:7.2f}s  caller says "{action.arg}"', file=out)
        await phone.play(pcm)
    elif action.verb == "hangup":
        print(f"{phone.now_s:7.2f}s  caller hangs up", file=out)
        await phone.hang_up()


async def run_call(args: argparse.Namespace, actions: list[Action], out: TextIO) -> int:
    def show(event: CallEvent) -> None:
        print(f"{event.t_s:7.2f}s  {event.kind}{': ' + event.detail if event.detail else ''}", file=out)
        out.flush()

    wavs: dict[str, bytes] = {}
    for action in actions:  # read (and resample) before dialling, so each plays on time
        if action.verb == "play" and action.arg not in wavs:
            try:
                wavs[action.arg] = read_wav_8k(Path(action.arg))
            except (OSError, EOFError, wave.Error) as exc:
                print(f"ivr-bridge call: cannot read {action.arg}: {exc}", file=sys.stderr)
                return 2
    phone = Softphone(
        args.url, caller=args.caller, called=args.called, auth_token=args.twilio_auth_token, on_event=show
    )
    try:
        await phone.dial()
    except (SoftphoneError, OSError) as exc:
        print(f"ivr-bridge call: {exc}", file=sys.stderr)
        return 1
    try:
        running: list[asyncio.Task[None]] = []
        for action in actions:
            delay = action.at_s - phone.now_s
            if delay > 0 and not await phone.wait_closed(delay):
                pass
            if phone.closed:
                break
            running.append(asyncio.create_task(_act(phone, action, out, wavs)))
        remaining = max(0.0, seconds(args.duration) - phone.now_s)
        if not await phone.wait_closed(remaining) and not phone.closed:
            print(f"{phone.now_s:7.2f}s  caller hangs up (--duration {args.duration})", file=out)
            await phone.hang_up()
        for task in running:
            task.cancel()
        await asyncio.sleep(0.3)  # the watcher reports the end (and asks /twilio/continue)
        if args.transcribe:
            for start, end in phone.speech_segments():
                pcm = phone.heard_pcm(max(0.0, start - 0.2), end + 0.2)
                text = await asyncio.get_running_loop().run_in_executor(None, recognise, pcm, None)
                print(f"{start:7.2f}s  bot: {text or '(not recognised)'}", file=out)
        if args.save:
            length = phone.save_heard(Path(args.save))
            print(f"saved {length:.1f} s of what the caller heard to {args.save}", file=out)
    finally:
        await phone.close()
    return 0


def call_command(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    try:
        actions = actions_from_args(args)
        seconds(args.duration)
        if args.twilio_auth_token is None:
            args.twilio_auth_token = Settings.from_env().twilio_auth_token
    except ConfigError as exc:
        print(f"ivr-bridge call: {exc}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(run_call(args, actions, out))
    except BridgeError as exc:
        print(f"ivr-bridge call: {exc}", file=sys.stderr)
        return 1


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    call = sub.add_parser(
        "call",
        help="call a running bridge over the Twilio protocol (play a WAV, press keys, save what was heard)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    call.add_argument("url", nargs="?", default="http://127.0.0.1:8080", help="the bridge's base URL")
    call.add_argument("--from", dest="caller", default="+15555550123", help="the caller's number")
    call.add_argument("--to", dest="called", default="+15550100", help="the number called (picks the flow)")
    call.add_argument("--play", default=None, help="a WAV file the caller plays (any rate, 16-bit)")
    call.add_argument("--play-at", default="0.5s", help="when to start --play (default 0.5s)")
    call.add_argument("--digits", action="append", help="keys to press (repeatable; pair with --at)")
    call.add_argument("--at", action="append", help="when to press the --digits of the same position")
    call.add_argument("--script", default=None, help="a file of `TIME ACTION` lines (see above)")
    call.add_argument("--duration", default="60s", help="hang up after this long (default 60s)")
    call.add_argument("--save", default=None, help="write what the caller heard to this WAV file")
    call.add_argument("--transcribe", action="store_true", help="recognise what the bot said (locally)")
    call.add_argument(
        "--twilio-auth-token",
        default=None,
        help="sign the webhooks and the stream upgrade (default: TWILIO_AUTH_TOKEN)",
    )
    call.set_defaults(func=call_command)
