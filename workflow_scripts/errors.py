"""Errors for bad user input. The message always names the file and the fix."""
from __future__ import annotations

import dataclasses
from typing import Any, Iterable


class InputError(ValueError):
    """Bad input data (video, calibration, masks, config).

    Raise as ``InputError(f"{path}: what is wrong. Fix: what to do.")`` so that the rule's log
    tells a user exactly which file to look at.
    """


def reject_unknown_keys(keys: Iterable[str], settings_class: Any, source: str, what: str) -> None:
    """Raise InputError naming ``source`` if any of ``keys`` is not a field of the dataclass
    ``settings_class`` (``what`` names the settings in the message, e.g. "loss")."""
    known = {f.name for f in dataclasses.fields(settings_class)}
    unknown = sorted(set(keys) - known)
    if unknown:
        raise InputError(f"{source}: unknown {what} setting(s) {unknown}. Fix: remove them or use some of {sorted(known)}.")
