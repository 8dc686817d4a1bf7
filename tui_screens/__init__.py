"""Screens and widgets of the Textual app (`tui.py`): one module per screen.

Each screen calls the library (`edge.*`, the quantize report) in a thread worker and only
formats what it gets back; `common.py` holds the formatting and the error handling they share.
"""
