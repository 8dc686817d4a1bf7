"""edge: fine-tune, shrink, profile and push small Gemma 3 models to phones.

The library never imports textual; the TUI (`tui.py`) is a thin face over it.
"""

__version__ = "0.1.0"
