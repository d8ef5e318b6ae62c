"""Samples read but never shown to the model, counted per reason, and ``data.max_dropped``."""

from __future__ import annotations

#: Why a sample read from the data never reaches the model, in the words the run reports.
DROP_REASONS = {
    "bad_image": "a missing or unreadable image (data.on_bad_image=skip)",
    "no_reply": "no reply left within data.max_length (every supervised token cut away)",
}
#: The dropped share is judged once this many samples were read (or at the end of the run).
MIN_SAMPLES_FOR_SHARE = 20


def dropped_text(bad_image: int, no_reply: int) -> str:
    counts = {"bad_image": bad_image, "no_reply": no_reply}
    parts = [f"{n} with {DROP_REASONS[k]}" for k, n in counts.items() if n]
    return "; ".join(parts) if parts else "none dropped: the replies hold no token to predict"


class DroppedSamples:
    """Running totals of a run (restored on resume): samples read, and dropped per reason."""

    def __init__(self, max_share: float, dropped: dict | None = None, read: int = 0):
        self.max_share = float(max_share)
        self.counts = dict.fromkeys(DROP_REASONS, 0) | dict(dropped or {})
        self.read = int(read)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def add(self, bad_image: int, no_reply: int, read: int) -> None:
        self.counts["bad_image"] += bad_image
        self.counts["no_reply"] += no_reply
        self.read += read

    def text(self) -> str:
        return dropped_text(self.counts["bad_image"], self.counts["no_reply"])

    def excess(self, final: bool = False) -> str | None:
        """Why the run must stop (more than ``data.max_dropped`` of the samples read were
        dropped), judged from :data:`MIN_SAMPLES_FOR_SHARE` samples on, or at the end of the run."""
        judged = self.read >= MIN_SAMPLES_FOR_SHARE or (final and self.read > 0)
        if not judged or self.total <= self.max_share * self.read:
            return None
        return (
            f"{self.total} of the {self.read} sample(s) read so far were dropped "
            f"({self.total / self.read:.0%}, more than data.max_dropped={self.max_share:g}): {self.text()}; "
            "check image_root and data.max_length (`owl data check` lists the problems), or raise data.max_dropped"
        )
