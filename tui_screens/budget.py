"""Budget: every device (connected phones, this machine, the bundled profiles) x every
variant: fits / tight / does not fit at the chosen n_ctx, the largest n_ctx that fits,
predicted decode speed and a thermal note; the recommended variant of each device is
starred. The details of the cell under the cursor are shown below the grid.

All numbers are `edge.budget`'s (`matrix`, `recommend`: the same as `edge budget`); this
screen only lays them out. `c` cycles n_ctx.
"""

from __future__ import annotations

import os

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Static

from tui_screens import library
from tui_screens.common import StatusLine, describe_error, fmt_bytes

STAR = "★"
HOT = "▼"
DEVICE_WIDTH = 28          # longer device names are cut; the detail panel shows them whole
CTX_CHOICES = (2048, 4096, 8192, 16384, 32768)
VERDICT_STYLE = {"fits": ("✓", "green"), "tight": ("~", "yellow"), "does not fit": ("✗", "red")}
LEGEND = (f"cell: verdict · largest n_ctx that fits · predicted decode tok/s   {STAR} recommended for that device   "
          f"✓ fits   ~ tight (may be killed under memory pressure)   ✗ does not fit   "
          f"{HOT} heat: sustained speed drops below the target")


def fmt_ctx(n: int) -> str:
    """32768 -> '32k', 24320 -> '23.8k', 512 -> '512'."""
    if n < 1024:
        return str(n)
    return f"{n // 1024}k" if n % 1024 == 0 else f"{n / 1024:.1f}k"


def short_names(names: list[str]) -> tuple[str, list[str]]:
    """Column headers without the part every variant shares: ('gemma-3-270m-', ['Q4_0', 'Q8_0'])."""
    stems = [n.removesuffix(".gguf") for n in names]
    prefix = os.path.commonprefix(stems) if len(stems) > 1 else ""
    cut = max(prefix.rfind(c) for c in "-_.") + 1 if prefix else 0
    prefix = prefix[:cut]
    if not prefix or any(len(s) == len(prefix) for s in stems):
        return "", stems
    return prefix, [s[len(prefix):] for s in stems]


def short_label(label: str) -> str:
    """'Samsung Galaxy S24 Ultra (SM-S928B)' -> 'Samsung Galaxy S24 Ultra' when it is too long."""
    return label.split(" (")[0] if len(label) > DEVICE_WIDTH else label


def cell_text(v, recommended: bool) -> Text:
    """'★ ✓ 32k · 41 tok/s' coloured by verdict; a variant that does not fit shows only that."""
    mark, style = VERDICT_STYLE.get(v.verdict, ("?", ""))
    if v.verdict == "does not fit":
        parts = [f"{mark} does not fit"]
    else:
        parts = [f"{mark} {fmt_ctx(v.max_ctx)}" if v.max_ctx else f"{mark} {v.verdict}"]
        if v.tok_s is not None:
            parts.append(f"{v.tok_s:.0f} tok/s")
    text = Text((STAR + " " if recommended else "  ") + " · ".join(parts), style=style)
    if v.verdict != "does not fit" and v.thermal.startswith("throttles"):   # edge.budget: below its target
        text.append(" " + HOT)
    if recommended:
        text.stylize("bold")
    return text


def detail_text(v, column: library.Column, recommended: str | None, reason: str) -> str:
    """Everything the budget says about one (variant, device), as a few lines of markup."""
    e = v.estimate
    mark, style = VERDICT_STYLE.get(v.verdict, ("?", ""))
    lines = [
        f"[b]{v.variant}[/b] on [b]{column.label}[/b] ({v.device_kind}) at n_ctx {v.ctx}: "
        f"[{style}]{mark} {v.verdict}[/{style}] · needs {fmt_bytes(v.total_bytes)} "
        f"(peak {fmt_bytes(v.peak_bytes)}) of {fmt_bytes(v.usable_bytes)} usable · largest n_ctx {v.max_ctx}",
        f"RAM: weights {fmt_bytes(e['weights_bytes'])} + KV cache {fmt_bytes(e['kv_bytes'])} + compute "
        f"{fmt_bytes(e['compute_bytes'])} + runtime {fmt_bytes(e['overhead_bytes'])}",
    ]
    if v.tok_s is not None:
        speed = f"speed: {v.tok_s:.1f} tok/s at an empty context, {v.tok_s_full:.1f} with it full"
        if v.energy_mj_per_token is not None:
            speed += f" · {v.energy_mj_per_token:.0f} mJ/token"
        if v.prompt_tok_s is not None:
            speed += f" · reads a prompt at {v.prompt_tok_s:.0f} tok/s"
        lines.append(speed)
    if v.thermal:
        lines.append(f"heat: {v.thermal}")
    apps = []
    for name, rule in (("PocketPal", v.pocketpal), ("AnythingLLM", v.anythingllm)):
        if rule:
            apps.append(f"{name} {'accepts' if rule.get('fits') else 'refuses'}"
                        + (" (tight)" if rule.get("tight") else ""))
    if apps:
        lines.append("the apps' own rules: " + ", ".join(apps))
    lines.append(f"{STAR} recommended here: {recommended or 'none'} — {reason}")
    lines += [f"[yellow]note:[/yellow] {w}" for w in v.warnings]
    return "\n".join(lines)


class BudgetScreen(Screen):
    """The grid (devices x variants), a legend, the selected cell's details."""

    BINDINGS = [Binding("r", "reload", "Refresh"),
                Binding("c", "cycle_ctx", "n_ctx")]

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("Budget: which variant fits which device", classes="title", id="budget-title")
        yield DataTable(id="budget-table", cursor_type="cell", zebra_stripes=True)
        yield Static(LEGEND, id="budget-legend")
        yield Static("", id="budget-detail")
        yield StatusLine(id="budget-status")
        yield Footer()

    def on_mount(self) -> None:
        self.ctx = 4096
        self.result: library.BudgetResult | None = None
        self.action_reload()

    def action_reload(self) -> None:
        self.query_one(StatusLine).show(f"estimating at n_ctx {self.ctx}…", "busy")
        self.compute(self.ctx)

    def action_cycle_ctx(self) -> None:
        i = CTX_CHOICES.index(self.ctx) if self.ctx in CTX_CHOICES else 0
        self.ctx = CTX_CHOICES[(i + 1) % len(CTX_CHOICES)]
        self.action_reload()

    @work(thread=True, exclusive=True, group="budget", exit_on_error=False)
    def compute(self, ctx: int) -> None:
        app = self.app
        try:
            if not app.variants:
                _, app.variants, app.report = library.variants(app.run_dir, app.folder)
            devices, notes = library.budget_devices(live=app.live, host=app.host)
            result = library.budget([v.path for v in app.variants], devices, ctx=ctx,
                                    report=app.report, notes=notes)
        except Exception as e:  # shown in the app, never a crash
            app.call_from_thread(self.query_one(StatusLine).show, describe_error(e), "error")
            return
        app.call_from_thread(self._show, result)

    def _show(self, r: library.BudgetResult) -> None:
        self.result = r
        prefix, headers = short_names(r.variants)
        self.query_one("#budget-title", Static).update(
            f"Budget at n_ctx {r.ctx}: which variant fits which device"
            + (f" · variants {prefix}…" if prefix else "") + " · c: n_ctx · Enter: push")
        table = self.query_one(DataTable)
        table.clear(columns=True)
        table.add_column("device", key="device",
                         width=min(DEVICE_WIDTH, max(len(short_label(c.label)) for c in r.devices)))
        for name, header in zip(r.variants, headers):
            table.add_column(header, key=name)
        for c in r.devices:
            table.add_row(short_label(c.label), *[cell_text(r.verdicts[c.key, n], r.recommended[c.key] == n)
                                     for n in r.variants], key=c.key)
        fitting = sum(1 for c in r.devices if r.recommended[c.key])
        msg = (f"{len(r.devices)} device(s) × {len(r.variants)} variant(s) · a variant fits "
               f"{fitting} of {len(r.devices)} device(s)")
        if self.app.report is None:
            msg += " · no quality report: recommendations by bits per weight"
        self.query_one(StatusLine).show(" · ".join([msg] + r.notes), "warn" if r.notes else "info")
        if r.devices and r.variants:
            table.move_cursor(row=0, column=1)
            self._detail(r.devices[0].key, r.variants[0])

    @on(DataTable.CellHighlighted, "#budget-table")
    def _highlighted(self, event: DataTable.CellHighlighted) -> None:
        self._detail(event.cell_key.row_key.value, event.cell_key.column_key.value)

    @on(DataTable.CellSelected, "#budget-table")
    def _selected(self, event: DataTable.CellSelected) -> None:
        """Enter on a cell: push that variant (to that phone, if it is a connected one)."""
        r, device_key, variant = self.result, event.cell_key.row_key.value, event.cell_key.column_key.value
        if r is None or variant not in r.variants:
            return
        path = next(v.path for v in self.app.variants if v.path.name == variant)
        serial = device_key.removeprefix("adb:") if device_key.startswith("adb:") else None
        self.app.push_this(file=path, serial=serial, ctx=r.ctx)

    def _detail(self, device_key: str, variant: str) -> None:
        r = self.result
        detail = self.query_one("#budget-detail", Static)
        if r is None or (device_key, variant) not in r.verdicts:
            detail.update("← a device: its recommended variant is starred; move right for details"
                          if r is not None else "")
            return
        column = next(c for c in r.devices if c.key == device_key)
        detail.update(detail_text(r.verdicts[device_key, variant], column,
                                  r.recommended[device_key], r.reasons[device_key]))
