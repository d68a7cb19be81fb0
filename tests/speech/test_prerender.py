"""Prompts rendered in a child process (bridge/speech/prerender.py): a real `python -m` child with the
real voice; only its audio comes back."""

from __future__ import annotations

import numpy as np
import pytest

from bridge.speech.prerender import PrerenderError, normalized, render_in_child

pytestmark = pytest.mark.slow


def test_child_renders_each_text_as_8k_speech_keyed_by_its_normalized_text() -> None:
    texts = ["One moment, please.", "Sorry,   I'm having\ntrouble right now."]
    rendered = render_in_child(texts)
    assert set(rendered) == {normalized(t) for t in texts}
    for text in texts:
        pcm = np.frombuffer(rendered[normalized(text)], dtype="<i2")
        assert 0.4 < pcm.size / 8000 < 5.0, (text, pcm.size)  # seconds of 8 kHz audio
        rms = float(np.sqrt(np.mean(pcm.astype(np.float64) ** 2)))
        assert rms > 500, rms  # speech at phone level, not silence
    longer = np.frombuffer(rendered[normalized(texts[1])], dtype="<i2").size
    assert longer > np.frombuffer(rendered["One moment, please."], dtype="<i2").size


def test_a_child_that_fails_names_its_exit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.executable", "/bin/false")
    with pytest.raises(PrerenderError, match="exited with 1"):
        render_in_child(["hello"])
