"""Command-line helpers shared by the package's entry points."""
from __future__ import annotations

import argparse


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends ``(default: X)`` to a flag's help only where it tells the user something.

    argparse's ``ArgumentDefaultsHelpFormatter`` appends it to every flag, which printed
    ``(default: 64) (default: None)`` for the config flags (their help states the config
    default; the argparse default is None so that only typed flags override ``--config``)
    and ``(default: None)`` for optional flags whose help already says what happens
    without them. So: nothing is appended when the help already names a default or when
    the default is None.
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        help_text = action.help or ""
        if "(default" in help_text.lower() or action.default is None:   # also matches "%(default)s"
            return help_text
        return super()._get_help_string(action)
