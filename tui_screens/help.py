"""The help screen: what each screen shows and the keys that drive it (`?` anywhere)."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Markdown

HELP = """\
# edge — terminal UI

Everything here calls the `edge` library: the numbers are the ones `edge budget`,
`edge devices` and `edge push` print.

| key | screen | what it shows |
|---|---|---|
| `1` `v` | **Variants** | GGUF files of the run (or folder): size, bits per weight, KLD and tokens/s from `report.json` |
| `2` `d` | **Devices** | phones connected over adb (RAM free, thermal status, battery temperature; refreshed every few seconds) and the bundled phone profiles |
| `3` `b` | **Budget** | every variant × every device: fits / tight / does not fit, largest n_ctx, predicted speed, heat; ★ = recommended |
| `4` `p` | **Push** | pick a file, a phone and an app, push with progress; `Esc` cancels |
| `5` | **Pipeline** | `edge run` into the run folder (`Ctrl+T`; `Esc` stops, Start again resumes): every stage's state from run.json, live progress, the fine-tune's loss |
| `c` | Budget | change n_ctx (2k, 4k, 8k, 16k, 32k) |
| `Ctrl+S` `Esc` | Push | start / cancel the push |
| `r` | any | refresh the current screen |
| `?` `F1` | any | this help |
| `q` | any | quit |

Tables: arrow keys move; `Enter` on a variant, a budget cell or a phone opens *Push* with it
selected. Buttons, lists and table rows also work with the mouse; `Tab` moves between widgets.

**No phone listed?** Plug it in with USB debugging on (Settings → Developer options), accept
the "Allow USB debugging" prompt on the phone, then `adb devices` should list it as `device`.
**adb not installed?** `sudo apt-get install adb` (or Android platform-tools), then press `r`.

Press `Esc` or `q` to close this help.
"""


class HelpScreen(ModalScreen):
    """A modal page of help over the current screen."""

    BINDINGS = [Binding("escape,q,question_mark", "dismiss", "Close")]

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help-body"):
            yield Markdown(HELP)
