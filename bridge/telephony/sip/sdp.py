"""SDP for the SIP leg: parse the caller's offer, choose the codec, build the answer. No I/O."""

from __future__ import annotations

from dataclasses import dataclass

from bridge.errors import ProtocolError
from bridge.media.g711 import Encoding
from bridge.telephony.rtp.packet import PT_PCMA, PT_PCMU
from bridge.telephony.sip.message import SipParseError


class NotAcceptable(ProtocolError):
    """The SDP offer has no codec the bridge speaks (answered 488)."""


@dataclass(slots=True)
class SdpOffer:
    address: str
    port: int
    payload_types: list[int]
    rtpmap: dict[int, str]  # pt -> "name/rate" lower-cased
    direction: str = "sendrecv"
    protocol: str = "RTP/AVP"


def parse_sdp(body: bytes) -> SdpOffer:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SipParseError("SDP is not UTF-8") from exc
    session_addr = ""
    media_addr = ""
    audio: SdpOffer | None = None
    in_audio = False
    direction = "sendrecv"
    for raw in text.splitlines():
        line = raw.strip()
        if len(line) < 2 or line[1] != "=":
            continue
        kind, value = line[0], line[2:]
        if kind == "m":
            parts = value.split()
            in_audio = bool(parts) and parts[0] == "audio" and audio is None
            if in_audio:
                if len(parts) < 4 or not parts[1].split("/")[0].isdigit():
                    raise SipParseError(f"bad SDP media line m={value!r}")
                pts = [int(p) for p in parts[3:] if p.isdigit()]
                audio = SdpOffer("", int(parts[1].split("/")[0]), pts, {}, protocol=parts[2])
        elif kind == "c":
            parts = value.split()
            addr = parts[2].split("/")[0] if len(parts) >= 3 else ""
            if audio is None:
                session_addr = addr
            elif in_audio:
                media_addr = addr
        elif kind == "a":
            name, _, val = value.partition(":")
            if name in ("sendrecv", "sendonly", "recvonly", "inactive"):
                if audio is None or in_audio:
                    direction = name
            elif name == "rtpmap" and in_audio and audio is not None:
                pt_s, _, enc = val.partition(" ")
                if pt_s.isdigit():
                    audio.rtpmap[int(pt_s)] = enc.strip().lower()
    if audio is None:
        raise NotAcceptable("SDP offer has no audio stream")
    audio.address = media_addr or session_addr
    audio.direction = direction
    if not audio.address:
        raise SipParseError("SDP offer has no connection address")
    return audio


@dataclass(frozen=True, slots=True)
class CodecChoice:
    encoding: Encoding
    payload_type: int
    dtmf_pt: int | None


def choose_codec(offer: SdpOffer) -> CodecChoice:
    """The first of PCMU/PCMA in the caller's order, and telephone-event/8000 if offered."""
    if "SAVP" in offer.protocol.upper():
        raise NotAcceptable(f"SDP offer wants {offer.protocol}: SRTP is not supported")
    dtmf_pt = None
    for pt, enc in offer.rtpmap.items():
        if enc.startswith("telephone-event/8000"):
            dtmf_pt = pt
            break
    for pt in offer.payload_types:
        enc = offer.rtpmap.get(pt, "")
        if pt == PT_PCMU or enc.startswith("pcmu/8000"):
            return CodecChoice("pcmu", pt, dtmf_pt)
        if pt == PT_PCMA or enc.startswith("pcma/8000"):
            return CodecChoice("pcma", pt, dtmf_pt)
    names = [offer.rtpmap.get(pt, str(pt)) for pt in offer.payload_types]
    raise NotAcceptable(f"SDP offer has neither PCMU nor PCMA: {names}")


# The direction we answer to each offered one (RFC 3264 6.1).
ANSWER_DIRECTION = {
    "sendrecv": "sendrecv",
    "sendonly": "recvonly",
    "recvonly": "sendonly",
    "inactive": "inactive",
}


def build_sdp(
    ip: str, port: int, session_id: int, version: int, choice: CodecChoice, direction: str = "sendrecv"
) -> bytes:
    name = "PCMU" if choice.encoding == "pcmu" else "PCMA"
    pts = [str(choice.payload_type)]
    lines = [
        "v=0",
        f"o=ivr-bridge {session_id} {version} IN IP4 {ip}",
        "s=ivr-bridge",
        f"c=IN IP4 {ip}",
        "t=0 0",
    ]
    if choice.dtmf_pt is not None:
        pts.append(str(choice.dtmf_pt))
    lines.append(f"m=audio {port} RTP/AVP {' '.join(pts)}")
    lines.append(f"a=rtpmap:{choice.payload_type} {name}/8000")
    if choice.dtmf_pt is not None:
        lines.append(f"a=rtpmap:{choice.dtmf_pt} telephone-event/8000")
        lines.append(f"a=fmtp:{choice.dtmf_pt} 0-15")
    lines += ["a=ptime:20", f"a={direction}"]
    return ("\r\n".join(lines) + "\r\n").encode()
