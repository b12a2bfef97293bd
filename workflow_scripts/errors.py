"""Errors for bad user input. The message always names the file and the fix."""
from __future__ import annotations


class InputError(ValueError):
    """Bad input data (video, calibration, masks, config).

    Raise as ``InputError(f"{path}: what is wrong. Fix: what to do.")`` so that the rule's log
    tells a user exactly which file to look at.
    """
