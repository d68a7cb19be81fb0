"""Word error rate for recogniser tests and benchmarks: lower case, punctuation dropped, digits spelled
out (Whisper writes "45678", pocketsphinx "four five six seven eight"), common contractions joined."""

from __future__ import annotations

from bridge.speech.asr import normalize_phrase


def normalize(text: str) -> list[str]:
    return normalize_phrase(text.replace("-", " "))


def word_error_rate(reference: str, hypothesis: str) -> tuple[int, int]:
    """(word errors: substitutions + insertions + deletions, words in the reference)."""
    ref, hyp = normalize(reference), normalize(hypothesis)
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[len(hyp)], len(ref)
