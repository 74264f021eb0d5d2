"""Watching it denoise: the terminal view, a live pygame window, GIF export, and the training curve.

Everything here drives the sampler one step at a time through `sampling.denoise`, which yields
(step, t, x_t, nfe) after each reverse step, and never waits for a whole sample before drawing. An AR
twin's checkpoint (ModelConfig.causal) is written left to right instead, by `ar.ar_steps`: one token per
step, the not-yet-written positions shown as [MASK].

What a frame shows, for one sample x_t of L tokens at frame k (k = 0 is the all-[MASK] start):
    a masked position                    a muted block
    a position revealed at step r <= k   its token, in a cell shaded by log10 p_i, p_i the probability the
                                         sampler drew it with:  p_i = p_theta(x_0^i = token | x_{t(r-1)})
                                         after temperature (mdlm_course.sampling.token_probs)
    revealed in the last FADE steps      highlighted, the highlight fading linearly: k - r = 0 .. FADE
p_i costs no extra network call: `_Probe` keeps the logits of the sampler's latest call, which was
made on x_t just before the step that revealed position i (cached steps reveal nothing, so they need
no logits).

A run is recorded once (`Trajectory`) and every view reads it: frame k is
    x_t^i = token_i if reveal_step_i <= k else [MASK]
so the window can step back and forth through the history, and a GIF can be written of any part.

The window (`DenoisingWindow`, `python -m mdlm_course visualize`) runs the sampler in a worker thread,
so a slow network call (a big model on a CPU) never blocks its event loop: the loop only reads the
recorded frames and draws, in a few milliseconds. On macOS a window must live in the main thread;
this one does, only the sampler runs elsewhere.
"""
from __future__ import annotations

import gc
import math
import os
import re
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from .checkpoint import CHECKPOINTS, CheckpointError, find_shipped_checkpoint, load_pretrained  # noqa: F401
from .config import check_number
from .errors import MdlmError
from .fileio import atomic_path
from .ar import ar_sample, ar_steps
from .sampling import METHODS, check_steps, denoise, sample, token_probs

MASK_GLYPH = "░"
FADE = 4                        # a fresh token's highlight fades over this many steps
MIN_TEMPERATURE = 0.05          # T and Shift-T never go below this (temperature 0 is not a distribution)
MAX_GIF_FRAMES = 100         # record_gif's default stride keeps a GIF to about this many frames
SPEEDS = (1, 2, 5, 10, 20, 50, 100, 200, 500)   # playback speeds, steps per second
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")   # control characters but \t and \n: shown as U+FFFD


class VisualizeError(MdlmError):
    """Bad input for the visualiser (no display, missing package, bad path). One line, says what to do."""


# ---------------------------------------------------------------------------------------------
# The terminal view
# ---------------------------------------------------------------------------------------------

def render(tokenizer, ids, mask_glyph: str = MASK_GLYPH) -> str:
    """Text of one sequence with each [MASK] drawn as a glyph.  render(tok, [84, mask, 33]) -> 'T░!'

    A control character that a byte-level model may write (ESC, CR, ...) is drawn as U+FFFD, so that it
    cannot move a terminal's cursor or ask a font for a glyph it lacks."""
    if not isinstance(ids, (list, tuple)) and not (isinstance(ids, (torch.Tensor, np.ndarray)) and ids.ndim == 1):
        raise VisualizeError(f"render: ids must be one sequence of token ids (a list or a 1-D tensor), got "
                             f"{type(ids).__name__}{f' of shape {tuple(ids.shape)}' if hasattr(ids, 'shape') else ''}")
    out, span = [], []
    for i in ids.tolist() if torch.is_tensor(ids) else ids:
        if i == tokenizer.mask_id:
            out.append(tokenizer.decode(span))
            out.append(mask_glyph)
            span = []
        else:
            span.append(i)
    out.append(tokenizer.decode(span))
    return CONTROL.sub("\ufffd", "".join(out))


def terminal_is_live(out) -> bool:
    """True when `out` is a terminal that understands cursor movement (not TERM=dumb)."""
    return out.isatty() and os.environ.get("TERM", "") != "dumb"


def show_denoising(model, tokenizer, *, seq_len: int, steps: int, method: str = "ancestral",
                   prompt: str | None = None, seed: int = 0, temperature: float = 1.0,
                   live: bool | None = None, fps: float = 20.0, frames_when_not_live: int = 4,
                   out=None) -> str:
    """Run the sampler and show its trajectory in a terminal; return the final text.

    live (default: stdout is a terminal and TERM is not "dumb") redraws one frame per step in place
    with ANSI escape codes; otherwise (a file, a pipe, a dumb terminal) prints `frames_when_not_live`
    evenly spaced frames as plain text, so logs and notebooks stay short.
    """
    check_number("show_denoising", "fps", fps, lo=0, lo_open=True)
    check_number("show_denoising", "frames_when_not_live", frames_when_not_live, integer=True, lo=1)
    out = out or sys.stdout
    live = terminal_is_live(out) if live is None else live and os.environ.get("TERM", "") != "dumb"
    generator = torch.Generator().manual_seed(seed)
    prompt_ids = torch.tensor(tokenizer.encode(prompt)) if prompt else None
    frames = denoise(model, mask_id=tokenizer.mask_id, num_samples=1, seq_len=seq_len, steps=steps,
                     method=method, temperature=temperature, prompt=prompt_ids, generator=generator)
    total = seq_len if method == "first_hitting" else steps
    shown = {max(1, round(total * k / frames_when_not_live)) for k in range(1, frames_when_not_live + 1)}
    text = ""
    for step, t, xt, nfe in frames:
        text = render(tokenizer, xt[0])
        header = f"step {step}/{total}  t={float(t[0]):.3f}  network calls={nfe}  masked={int((xt[0] == tokenizer.mask_id).sum())}"
        if live:
            out.write("\x1b[H\x1b[J" + header + "\n\n" + text + "\n")
            out.flush()
            time.sleep(1.0 / fps)
        elif step in shown:
            out.write(f"--- {header}\n{text}\n\n")
    out.flush()
    return text


# ---------------------------------------------------------------------------------------------
# Recording one run: the sampler's steps, with the probability of every revealed token
# ---------------------------------------------------------------------------------------------

class _Probe(nn.Module):
    """Wraps the denoiser and keeps the logits of its latest call (1, L, V), so the probability a
    token was drawn with can be read without calling the network again. An nn.Module, so the
    sampler sees the wrapped model's device, config and train/eval mode."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.config = getattr(model, "config", None)
        self.last_logits: torch.Tensor | None = None

    def forward(self, xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        logits = self.model(xt, t)
        self.last_logits = logits.detach()
        return logits


def total_steps(method: str, steps: int, num_masked: int) -> int:
    """Steps the sampler takes: `steps` (ancestral, confidence), one per masked token (first_hitting)."""
    return num_masked if method == "first_hitting" else steps


class Trajectory:
    """One sample's run, recorded step by step; frame k (0 = the start) can be read at any time.

        traj = Trajectory(model, tok, seq_len=64, steps=64)   # checks the arguments, runs nothing
        while traj.advance(): pass                             # or traj.run() in a worker thread
        traj.ids(traj.num_frames - 1)                          # the finished sample, (L,) ids

    Per position i it keeps tokens[i], reveal_step[i] (0 for the prompt, a large number while masked)
    and prob[i]; per frame, t and the network calls so far. `advance` writes a position's token before
    its reveal step and a frame's state before publishing the frame, so a reader in another thread only
    ever sees whole frames.
    """

    NOT_YET = np.iinfo(np.int64).max

    def __init__(self, model, tokenizer, *, seq_len: int, steps: int | None, method: str = "ancestral",
                 temperature: float = 1.0, prompt: str | None = None, seed: int = 0):
        self.tokenizer, self.mask_id = tokenizer, tokenizer.mask_id
        self.seq_len, self.method, self.temperature, self.prompt, self.seed = seq_len, method, temperature, prompt, seed
        check_temperature(temperature)
        prompt_ids = check_lengths(model, tokenizer, seq_len, prompt)
        self.steps = seq_len if steps is None else steps
        self._probe = _Probe(model)
        self.causal = is_causal(model)                  # an AR twin writes left to right (ar.ar_steps)
        if self.causal:
            prompt_ids = prompt_ids or ar_start(tokenizer)
            self.method = "left-to-right"                      # shown in the status line and GIF names
            self._steps = ar_steps(self._probe, seq_len=seq_len, prompt=torch.tensor(prompt_ids, dtype=torch.long),
                                   mask_id=self.mask_id, temperature=temperature,
                                   generator=torch.Generator().manual_seed(seed))
        else:
            self._steps = denoise(self._probe, mask_id=self.mask_id, num_samples=1, seq_len=seq_len,
                                  steps=self.steps, method=method, temperature=temperature,
                                  prompt=torch.tensor(prompt_ids, dtype=torch.long) if prompt_ids else None,
                                  generator=torch.Generator().manual_seed(seed))   # checks the rest, eagerly
        self.tokens = np.full(seq_len, self.mask_id, dtype=np.int64)
        self.tokens[:len(prompt_ids)] = prompt_ids
        self.reveal_step = np.full(seq_len, self.NOT_YET, dtype=np.int64)
        self.reveal_step[:len(prompt_ids)] = 0
        self.prob = np.ones(seq_len, dtype=np.float32)
        self.num_prompt = len(prompt_ids)
        self.total_steps = total_steps("first_hitting" if self.causal else method, self.steps,
                                       seq_len - len(prompt_ids))   # AR: one step per token, like first_hitting
        self.times, self.nfes = [1.0], [0]            # per frame; len(self.times) publishes a frame
        self.done = self.total_steps == 0
        self.error: Exception | None = None

    @property
    def num_frames(self) -> int:
        return len(self.times)

    def advance(self) -> bool:
        """Run one step of the sampler and record it. False when the sample is finished."""
        if self.done:
            return False
        try:
            step, t, xt, nfe = next(self._steps)
        except StopIteration:
            self.done = True
            return False
        xt = xt[0].cpu()                                                # (L,)
        new = ((xt != self.mask_id) & torch.from_numpy(self.reveal_step == self.NOT_YET)).nonzero()[:, 0]
        if len(new):
            rows = new - 1 if self.causal else new                      # AR: position i is predicted at i - 1
            logits = self._probe.last_logits[0, rows].float().cpu()     # (n, V): the call made on x_t before this step
            p = token_probs(logits, self.mask_id, self.temperature)     # (n, V) float64, what the token was drawn from
            self.prob[new.numpy()] = p.gather(-1, xt[new, None])[:, 0].numpy()
            self.tokens[new.numpy()] = xt[new].numpy()
            self.reveal_step[new.numpy()] = step
        self.times.append(float(t[0]))
        self.nfes.append(int(nfe))
        return True

    def run(self, stop: threading.Event | None = None) -> None:
        """Record every step (until `stop` is set). Exceptions are kept in self.error for the viewer."""
        try:
            while not (stop is not None and stop.is_set()) and self.advance():
                pass
        except Exception as e:  # noqa: BLE001 - handed to the window, which shows it in one line
            self.error = e
            self.done = True
        self.done = True

    def finished(self, k: int) -> bool:
        return self.done and k >= self.num_frames - 1

    def ids(self, k: int) -> np.ndarray:
        """Frame k's x_t (L,): a token where it was revealed at a step <= k, else mask_id."""
        return np.where(self.reveal_step <= k, self.tokens, self.mask_id)

    def masked_fraction(self, k: int) -> float:
        return float((self.reveal_step > k).mean())

    def text(self, k: int | None = None) -> str:
        return render(self.tokenizer, self.ids(self.num_frames - 1 if k is None else k).tolist())


def check_temperature(temperature: float) -> None:
    if not isinstance(temperature, (int, float)) or not temperature > 0 or math.isinf(temperature):
        raise VisualizeError(f"temperature must be a finite number > 0 (e.g. 0.7; the window's floor is "
                         f"{MIN_TEMPERATURE}), got {temperature!r}")


# ---------------------------------------------------------------------------------------------
# Drawing a frame with pygame (shared by the window and the GIF writer)
# ---------------------------------------------------------------------------------------------

def import_pygame():
    """pygame-ce (or classic pygame 2), imported quietly; a clear error names the package if missing."""
    os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
    try:
        import pygame
    except ImportError:
        raise VisualizeError("the window needs pygame: pip install pygame-ce") from None
    return pygame


COLORS = {
    "bg": (24, 26, 31), "text": (232, 232, 228), "muted": (140, 144, 152), "mask": (56, 60, 70),
    "prompt": (150, 180, 255), "fresh": (255, 214, 90), "fresh_text": (30, 30, 30),
    "bar": (34, 37, 44), "error": (255, 120, 110),
}
# p of the drawn token -> cell shade, on a log scale from P_FLOOR to 1: a guess is dark red, a sure token
# dark green. Log, because a small model's p spans decades (median ~0.005 for the shipped checkpoint).
P_FLOOR = 1e-4
SHADE_STOPS = ((0.0, (112, 38, 48)), (0.5, (104, 82, 30)), (1.0, (30, 92, 62)))


def _lerp(a, b, w: float):
    return tuple(int(round(x + (y - x) * w)) for x, y in zip(a, b))


def _shade(p: float):
    for (p0, c0), (p1, c1) in zip(SHADE_STOPS, SHADE_STOPS[1:]):
        if p <= p1:
            return _lerp(c0, c1, (p - p0) / (p1 - p0))
    return SHADE_STOPS[-1][1]


_SHADES = [_shade(i / 255) for i in range(256)]        # a lookup table: a frame shades hundreds of cells


def shade(p: float):
    """Cell colour for a token drawn with probability p, log scale.  shade(1e-4) -> (112, 38, 48) (dark red)"""
    x = math.log10(max(float(p), P_FLOOR)) / -math.log10(P_FLOOR) + 1          # 1e-4 -> 0, 1e-2 -> 0.5, 1 -> 1
    return _SHADES[int(round(min(max(x, 0.0), 1.0) * 255))]


def _visible(text: str) -> str:
    """Control characters spelt out, so a byte token can be drawn.  '\x00a' -> '\\x00a'"""
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" if ord(c) < 256 else f"\\u{ord(c):04x}"
                   for c in text)


class Painter:
    """Lays out one frame as wrapped cells and draws it on any pygame Surface (window or offscreen).

    Text comes from pygame's own default font (no system font needed). The text area takes the
    largest font size at which the whole sequence fits; rendered glyph strips are cached, so a frame
    costs a few blits.
    """

    SIZES = (30, 26, 22, 19, 16, 13)
    HELP = ("space play/pause   Left/Right step   R new sample   +/- speed   T/Shift-T temperature   "
            "M method   P prompt   S save GIF   Q quit")

    def __init__(self, tokenizer):
        self.pg = import_pygame()
        self.pg.font.init()
        self.tokenizer, self.mask_id = tokenizer, tokenizer.mask_id
        self._fonts: dict[int, object] = {}
        self._pieces: dict[int, tuple[str, ...]] = {}      # token id -> text pieces split at newlines
        self._glyphs: dict[tuple, object] = {}             # (size, text, colour) -> Surface
        self._widths: dict[tuple, int] = {}
        self._cells: dict[tuple, list] = {}                # (token id, size) -> its cells, see _token_cells

    def font(self, size: int):
        if size not in self._fonts:
            self._fonts[size] = self.pg.font.Font(None, size)
        return self._fonts[size]

    def text_surface(self, size: int, text: str, color):
        key = (size, text, color)
        if key not in self._glyphs:
            if len(self._glyphs) > 20_000:
                self._glyphs.clear()
            self._glyphs[key] = self.font(size).render(text, True, color)
        return self._glyphs[key]

    def width(self, size: int, text: str) -> int:
        key = (size, text)
        if key not in self._widths:
            self._widths[key] = self.font(size).size(text)[0]
        return self._widths[key]

    def pieces(self, token: int) -> tuple[str, ...]:
        """A token's text split at newlines: ' the' -> (' the',); 'a\\n\\nb' -> ('a', '', '', 'b')."""
        if token not in self._pieces:
            text = self.tokenizer.decode([int(token)]).replace("\t", "    ")
            self._pieces[token] = tuple(_visible(part) for part in text.split("\n"))
        return self._pieces[token]

    # -- layout ------------------------------------------------------------------------------

    def layout(self, ids, size: int, width: int):
        """Cells for ids at a font size, wrapped to `width` px: [(position, x, y, w, label)], height, line height.

        A cell's label is its text without leading spaces (they become the gap before it); a newline
        starts a new line and shows as a pilcrow cell; a [MASK] is a block three letters wide.
        """
        line_h = self.font(size).get_linesize() + 6
        cells, x, y, gap = [], 0, 0, 2
        for pos, tok in enumerate(ids.tolist() if hasattr(ids, "tolist") else ids):
            for newline, label, lead, w in self._token_cells(int(tok), size):
                if newline:
                    x, y = 0, y + line_h
                if label is None and w == 0:
                    continue
                if x > 0 and x + lead + w > width:
                    x, y, lead = 0, y + line_h, 0
                x += lead if x > 0 else 0
                cells.append((pos, x, y, w, label))
                x += w + gap
        return cells, y + line_h, line_h

    def _token_cells(self, token: int, size: int):
        """A token's cells at a size, cached: [(newline before, label, leading space px, width px)].
        A [MASK] is one cell with label None."""
        key = (token, size)
        if key not in self._cells:
            space, pad = self.width(size, " "), 3
            if token == self.mask_id:
                cells = [(False, None, 0, 3 * self.width(size, "n"))]
            else:
                parts, cells = self.pieces(token), []
                for j, part in enumerate(parts):
                    label = part.lstrip(" ")
                    lead = (len(part) - len(label)) * space
                    label = label or ("\u00b6" if len(parts) > 1 and j == 0 else "\u00b7" if part else "")
                    if label:
                        cells.append((j > 0, label, lead, self.width(size, label) + 2 * pad))
                    elif j > 0:
                        cells.append((True, None, 0, 0))                # a bare line break
            self._cells[key] = cells
        return self._cells[key]

    def fit(self, ids, width: int, height: int):
        """The largest font size whose layout fits in width x height: (size, cells, line_h)."""
        for size in self.SIZES:
            cells, h, line_h = self.layout(ids, size, width)
            if h <= height:
                return size, cells, line_h
        return size, cells, line_h

    # -- drawing -----------------------------------------------------------------------------

    def draw(self, surface, traj: Trajectory, k: int, *, status: str, message: str = "",
             message_is_error: bool = False, help_text: str | None = None) -> None:
        """Draw frame k of the trajectory: status line, cells, legend and help bar."""
        pg = self.pg
        W, H = surface.get_size()
        surface.fill(COLORS["bg"])
        margin, small = 16, 22
        bar_h = self.font(small).get_linesize() + 10
        # status bar on top
        pg.draw.rect(surface, COLORS["bar"], (0, 0, W, bar_h))
        surface.blit(self.text_surface(small, status, COLORS["text"]), (margin, 5))
        # the text
        ids = traj.ids(k)
        top = bar_h + margin
        bottom = H - 2 * bar_h - margin
        size, cells, line_h = self.fit(ids, W - 2 * margin, max(bottom - top, 1))
        age = k - traj.reveal_step                                     # (L,) steps since revealed
        for pos, x, y, w, label in cells:
            rect = pg.Rect(margin + x, top + y, w, line_h - 4)
            if rect.top > bottom + line_h:
                break
            if label is None:
                pg.draw.rect(surface, COLORS["mask"], rect, border_radius=3)
                continue
            if traj.reveal_step[pos] == 0:                              # the prompt: plain coloured text
                surface.blit(self.text_surface(size, label, COLORS["prompt"]), (rect.x + 3, rect.y + 2))
                continue
            base = shade(traj.prob[pos])
            a = int(age[pos])
            fresh = max(0.0, 1.0 - a / FADE) if a >= 0 else 0.0
            color = _lerp(base, COLORS["fresh"], fresh) if fresh > 0 else base
            pg.draw.rect(surface, color, rect, border_radius=3)
            ink = COLORS["fresh_text"] if fresh > 0.5 else COLORS["text"]
            surface.blit(self.text_surface(size, label, ink), (rect.x + 3, rect.y + 2))
        # message + legend line, then the help bar
        y = H - 2 * bar_h
        if message:
            color = COLORS["error"] if message_is_error else COLORS["fresh"]
            surface.blit(self.text_surface(small, message, color), (margin, y + 5))
        else:
            self._legend(surface, small, margin, y + 5)
        pg.draw.rect(surface, COLORS["bar"], (0, H - bar_h, W, bar_h))
        surface.blit(self.text_surface(small, self.HELP if help_text is None else help_text, COLORS["muted"]),
                     (margin, H - bar_h + 5))

    def _legend(self, surface, size: int, x: int, y: int) -> None:
        """'p(token) when drawn:  1e-4 [red .. green, log scale] 1   [block] masked   [yellow] just revealed'"""
        pg = self.pg
        h = self.font(size).get_linesize()
        for text, draw in (("p(token) when drawn:  1e-4", None), ("gradient", None), ("1     ", None),
                           ("masked     ", COLORS["mask"]), ("just revealed     ", COLORS["fresh"]),
                           ("prompt", None)):
            if text == "gradient":
                for i in range(80):
                    pg.draw.line(surface, _SHADES[i * 255 // 79], (x + 4 + i, y + 2), (x + 4 + i, y + h - 2))
                x += 92
                continue
            if draw is not None:
                pg.draw.rect(surface, draw, (x, y + 2, 24, h - 4), border_radius=3)
                x += 30
            color = COLORS["prompt"] if text == "prompt" else COLORS["muted"]
            surface.blit(self.text_surface(size, text, color), (x, y))
            x += self.width(size, text) + 4

    def status(self, traj: Trajectory, k: int, *, extra: str = "") -> str:
        """'step 12/64   t=0.812   masked 81%   network calls 12   ancestral   T=1.00'"""
        return (f"step {k}/{traj.total_steps}   t={traj.times[k]:.3f}   masked {100 * traj.masked_fraction(k):.0f}%   "
                f"network calls {traj.nfes[k]}   {traj.method}   T={traj.temperature:.2f}   seed {traj.seed}" + extra)


# ---------------------------------------------------------------------------------------------
# GIF export
# ---------------------------------------------------------------------------------------------

def import_pillow():
    try:
        from PIL import Image
    except ImportError:
        raise VisualizeError("writing a GIF needs Pillow: pip install pillow (it comes with matplotlib)") from None
    return Image


def gif_frames(num_frames: int, stride: int = 1) -> list[int]:
    """Frames a GIF shows: the start, every `stride`-th step, and the last.  (6, 2) -> [0, 2, 4, 5]"""
    if stride < 1:
        raise VisualizeError(f"stride must be >= 1, got {stride}")
    last = num_frames - 1
    return sorted(set(range(0, last + 1, stride)) | {last})


def check_output_path(path: str | Path, *, writable: bool = False) -> Path:
    """The GIF's path, checked before any sampling: a name ending in .gif, in a folder that exists (writable=True:
    and that can be written, by writing and removing a probe file), not a folder itself."""
    path = Path(path)
    if path.name.lower() == ".gif":
        raise VisualizeError(f"{path}: give the GIF a name before .gif, e.g. {path.parent / 'denoising.gif'}")
    if path.suffix.lower() != ".gif":
        raise VisualizeError(f"{path}: the recording is an animated GIF; give a path ending in .gif")
    if not path.parent.is_dir():
        raise VisualizeError(f"{path}: the folder {path.parent} does not exist; create it first")
    if path.is_dir():
        raise VisualizeError(f"{path}: is a folder; give the path of a .gif file (e.g. {path / 'denoising.gif'})")
    if writable:
        probe = path.parent / f".{path.name}.probe-{os.getpid()}"
        try:
            probe.write_bytes(b"ok")
            probe.unlink()
        except OSError as e:
            raise VisualizeError(f"{path}: cannot write in {path.parent} ({e.strerror}); choose another "
                                 "--record path") from None
    return path


class GifWriter:
    """Renders chosen frames of a trajectory offscreen, then writes them as one animated GIF.

    `work(budget_s)` renders frames until the time budget is spent, so the window can spread the work
    over its frames; the palette quantisation and the file writing then run in a thread. All frames
    share one palette (made from the first, middle and last frames), and a frame stores only the
    pixels that changed since the one before (the others are transparent), so the GIF stays small.
    """

    COLORS = 96            # palette entries for the picture ...
    CLEAR = 255            # ... and the transparent index: "same as the frame before"

    def __init__(self, painter: Painter, traj: Trajectory, path: str | Path, *, frames: list[int],
                 width: int = 800, height: int | None = None, fps: float = 12.0, hold_s: float = 2.0):
        self.Image = import_pillow()
        self.path = check_output_path(path)
        self.painter, self.traj, self.frames = painter, traj, frames
        self.fps, self.hold_s, self.width, self.height = fps, hold_s, width, height
        self._heights: list[int] = []           # layout height of each frame, measured before drawing
        self.surface = None
        self.images: list = []
        self.thread: threading.Thread | None = None
        self.error: Exception | None = None

    @property
    def progress(self) -> float:
        return len(self.images) / max(len(self.frames), 1)

    @property
    def finished(self) -> bool:
        return self.thread is not None and not self.thread.is_alive()

    def work(self, budget_s: float = float("inf")) -> bool:
        """Render frames for up to budget_s seconds (at least one unit of work); start writing when all are
        rendered. True when the file is written."""
        deadline = time.perf_counter() + budget_s
        while self._work_one() and time.perf_counter() < deadline:
            pass
        if len(self.images) == len(self.frames) and self.thread is None:
            self.thread = threading.Thread(target=self._write, daemon=True, name="mdlm-gif")
            self.thread.start()
        return self.finished

    def _work_one(self) -> bool:
        """Measure one frame's layout (to size the GIF) or render one frame. False when all are rendered."""
        if self.height is None:                         # tall enough for every frame, at a mid font size
            k = self.frames[len(self._heights)]
            self._heights.append(self.painter.layout(self.traj.ids(k), Painter.SIZES[2], self.width - 32)[1])
            if len(self._heights) == len(self.frames):
                self.height = max(self._heights) + 140
            return True
        if self.surface is None:
            self.surface = self.painter.pg.Surface((self.width, self.height))
        if len(self.images) == len(self.frames):
            return False
        k = self.frames[len(self.images)]
        self.painter.draw(self.surface, self.traj, k, status=self.painter.status(self.traj, k), help_text="")
        self.images.append(self.Image.frombytes("RGB", self.surface.get_size(),
                                                _surface_bytes(self.painter.pg, self.surface)))
        return len(self.images) < len(self.frames)

    def _write(self) -> None:
        try:
            Image, imgs = self.Image, self.images
            picks = [imgs[0], imgs[len(imgs) // 2], imgs[-1]]
            montage = Image.new("RGB", (imgs[0].width, imgs[0].height * len(picks)))
            for i, im in enumerate(picks):
                montage.paste(im, (0, i * im.height))
            palette = montage.quantize(colors=self.COLORS, method=Image.Quantize.MEDIANCUT)
            rgb = (palette.getpalette()[:3 * self.COLORS] + [0, 0, 0] * 256)[:768]
            index = [np.asarray(im.quantize(palette=palette, dither=Image.Dither.NONE)) for im in imgs]
            # Each frame after the first keeps only the pixels that changed; the rest is transparent and
            # shows the frame below it (disposal=1), so a step costs bytes for its few new cells only.
            frames = []
            for i, ix in enumerate(index):
                if i > 0:
                    ix = np.where(ix == index[i - 1], self.CLEAR, ix).astype(np.uint8)
                frame = Image.frombytes("P", (ix.shape[1], ix.shape[0]), np.ascontiguousarray(ix).tobytes())
                frame.putpalette(rgb)
                frames.append(frame)
            step_ms = max(20, int(round(1000 / self.fps)))
            durations = [step_ms] * (len(frames) - 1) + [int(self.hold_s * 1000)]
            with atomic_path(self.path) as tmp:                   # a half-written GIF is never left behind
                frames[0].save(tmp, format="GIF", save_all=True, append_images=frames[1:], duration=durations,
                               loop=0, optimize=False, disposal=1, transparency=self.CLEAR)
        except Exception as e:  # noqa: BLE001 - shown by the window / raised by record_gif
            self.error = e

    def write(self) -> Path:
        """Render everything and write the file now (blocking). Returns the path."""
        self.work()
        self.thread.join()
        if self.error is None:
            return self.path
        if isinstance(self.error, OSError):                         # a full disk, a folder removed meanwhile
            raise VisualizeError(f"{self.path}: could not write the GIF ({self.error.strerror or self.error}); free "
                                 "some space or choose another --record path") from None
        raise self.error


def _surface_bytes(pg, surface) -> bytes:
    tobytes = getattr(pg.image, "tobytes", None) or pg.image.tostring      # pygame < 2.1.3 has only tostring
    return tobytes(surface, "RGB")


def record_gif(model, tokenizer, path: str | Path, *, seq_len: int, steps: int | None = None,
               method: str = "ancestral", temperature: float = 1.0, prompt: str | None = None,
               seed: int = 0, stride: int | None = None, width: int = 800, fps: float | None = None) -> Path:
    """Run one sample offscreen and write its denoising as an animated GIF: the all-[MASK] start, one
    frame per `stride` steps, and the finished text (held 2 s). Needs no display.

    stride=None: 1 up to MAX_GIF_FRAMES steps, then the smallest stride that keeps the GIF to that many
    frames (256 tokens -> stride 3, about 1.5 MB). fps=None: the animation lasts about 6 seconds.

        record_gif(model, tok, "denoise.gif", seq_len=64, steps=64)   -> Path("denoise.gif"), 65 frames
    """
    path = check_output_path(path, writable=True)
    import_pillow()
    check_command_args(stride=stride)
    check_number("record_gif", "width", width, integer=True, lo=64, hi=10_000)
    if fps is not None:
        check_number("record_gif", "fps", fps, lo=0, lo_open=True, hi=100)
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    traj = Trajectory(model, tokenizer, seq_len=seq_len, steps=steps, method=method,
                      temperature=temperature, prompt=prompt, seed=seed)
    traj.run()
    if traj.error is not None:
        raise traj.error
    stride = stride or max(1, math.ceil(traj.total_steps / MAX_GIF_FRAMES))
    frames = gif_frames(traj.num_frames, stride)
    fps = fps or min(max(len(frames) / 6.0, 6.0), 25.0)
    return GifWriter(Painter(tokenizer), traj, path, frames=frames, width=width, fps=fps).write()


# ---------------------------------------------------------------------------------------------
# The window
# ---------------------------------------------------------------------------------------------

def display_available() -> bool:
    """A desktop to open a window on: DISPLAY or WAYLAND_DISPLAY on Linux; always on macOS and Windows."""
    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def check_real_display(pg) -> None:
    """A VisualizeError when SDL, asked for a window, fell back to a driver that shows nothing (a DISPLAY whose
    X server is gone, e.g. a closed ssh -X forward): the window would wait for Q forever, unseen."""
    driver = pg.display.get_driver()
    if driver in ("offscreen", "dummy") and os.environ.get("SDL_VIDEODRIVER", "") != driver:
        pg.display.quit()
        raise VisualizeError(f"no window can be shown: SDL fell back to its {driver!r} driver (DISPLAY="
                             f"{os.environ.get('DISPLAY', '')!r} does not answer, e.g. a closed ssh -X forward); "
                             "add --record out.gif to write a GIF instead, or fix DISPLAY")


def default_speed(total: int, seconds: float = 4.0) -> int:
    """The playback speed (steps/s) closest to showing the whole sample in `seconds`.  (64) -> 20"""
    return min(SPEEDS, key=lambda s: abs(math.log(s * seconds / max(total, 1))))


class DenoisingWindow:
    """A pygame window that shows the sampler denoise, live. See the module docstring.

        DenoisingWindow(model, tok, seq_len=64, steps=64).run()       # until Q, Esc or the close box

    State a test can read: playing, frame (the frame shown), speed, temperature, method, seed, prompt,
    traj (the recorded run), frame_times (seconds of work per loop iteration, without the sleep).
    linger: close by itself this many seconds after the sample is done, unless a key was pressed.
    """

    def __init__(self, model, tokenizer, *, seq_len: int, steps: int | None = None, method: str = "ancestral",
                 temperature: float = 1.0, prompt: str | None = None, seed: int = 0,
                 size: tuple[int, int] = (1000, 600), fps: int = 60, linger: float | None = None,
                 save_dir: str | Path = ".", title: str = "mdlm-course: watch a masked diffusion LM denoise"):
        check_temperature(temperature)
        if method not in METHODS:
            raise VisualizeError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
        self.model, self.tokenizer = model, tokenizer
        self.seq_len, self.steps, self.method, self.temperature = seq_len, steps, method, float(temperature)
        self.prompt, self.seed, self.fps, self.linger = prompt, seed, fps, linger
        self.save_dir = Path(save_dir)
        self.traj = self._new_trajectory()                             # raises on bad input, before a window opens
        try:
            import_pillow()                                            # now, not in the frame where S is pressed
        except VisualizeError:
            pass                                                       # S will say what to install
        self.pg = import_pygame()
        self.pg.display.init()
        self.pg.font.init()
        self.screen = self.pg.display.set_mode(size, self.pg.RESIZABLE)
        check_real_display(self.pg)
        self.pg.display.set_caption(title)
        self.painter = Painter(tokenizer)
        self.clock = self.pg.time.Clock()
        self.speed = default_speed(self.traj.total_steps)
        self.playing, self.playhead, self.running = True, 0.0, True
        self.typing: str | None = None                                 # the prompt being typed (P)
        self.message, self.message_is_error, self.message_until = "", False, 0.0
        self.key_pressed, self.done_at = False, None
        self.gif: GifWriter | None = None
        self.frame_times: list[float] = []
        self.frame_cpu_times: list[float] = []   # the loop thread's own CPU time per frame (immune to other load)
        self._stop, self._worker = threading.Event(), None
        self._start_worker()

    # -- the sampler, in a worker thread -------------------------------------------------------

    def _new_trajectory(self) -> Trajectory:
        return Trajectory(self.model, self.tokenizer, seq_len=self.seq_len, steps=self.steps, method=self.method,
                          temperature=self.temperature, prompt=self.prompt, seed=self.seed)

    def _start_worker(self) -> None:
        self._stop = threading.Event()
        self._worker = threading.Thread(target=self.traj.run, args=(self._stop,), daemon=True,
                                        name="mdlm-sampler")
        self._worker.start()

    def restart(self, **changes) -> bool:
        """Start a new sample with some settings changed (seed, method, temperature, prompt).

        Bad settings (e.g. a prompt longer than the sequence) leave the current sample running and
        show the reason. The old worker is told to stop after its current step; its frames are dropped.
        """
        old = {k: getattr(self, k) for k in changes}
        for k, v in changes.items():
            setattr(self, k, v)
        try:
            traj = self._new_trajectory()
        except ValueError as e:
            for k, v in old.items():
                setattr(self, k, v)
            self.say(str(e), error=True)
            return False
        self._stop.set()
        self.traj, self.playhead, self.playing, self.done_at = traj, 0.0, True, None
        self._start_worker()
        return True

    @property
    def frame(self) -> int:
        return min(int(self.playhead), self.traj.num_frames - 1)

    def say(self, text: str, *, error: bool = False, seconds: float = 4.0) -> None:
        self.message, self.message_is_error, self.message_until = text, error, time.monotonic() + seconds

    # -- keys ---------------------------------------------------------------------------------

    def handle(self, event) -> None:
        pg = self.pg
        if event.type == pg.QUIT:
            self.running = False
        elif self.typing is not None:
            self._handle_typing(event)
        elif event.type == pg.KEYDOWN:
            self.key_pressed = True
            self._handle_key(event.key, bool(getattr(event, "mod", 0) & pg.KMOD_SHIFT))

    def _handle_key(self, key: int, shift: bool) -> None:
        pg = self.pg
        if key in (pg.K_q, pg.K_ESCAPE):
            self.running = False
        elif key == pg.K_SPACE:
            if self.traj.finished(self.frame) and not self.playing:
                self.playhead = 0.0                                     # play a finished sample again
            self.playing = not self.playing
        elif key in (pg.K_LEFT, pg.K_RIGHT):
            self.playing = False
            self.playhead = float(min(max(self.frame + (1 if key == pg.K_RIGHT else -1), 0), self.traj.num_frames - 1))
        elif key in (pg.K_PLUS, pg.K_EQUALS, pg.K_KP_PLUS, pg.K_MINUS, pg.K_KP_MINUS, pg.K_UNDERSCORE):
            i = SPEEDS.index(self.speed) + (1 if key in (pg.K_PLUS, pg.K_EQUALS, pg.K_KP_PLUS) else -1)
            self.speed = SPEEDS[min(max(i, 0), len(SPEEDS) - 1)]
            self.say(f"speed {self.speed} steps/s")
        elif key == pg.K_t:
            t = max(MIN_TEMPERATURE, round(self.temperature - 0.1, 2)) if shift else min(5.0, round(self.temperature + 0.1, 2))
            if self.restart(temperature=t):
                self.say(f"temperature {t:.2f} (same seed, new run)")
        elif key == pg.K_m:
            method = METHODS[(METHODS.index(self.method) + 1) % len(METHODS)]
            if self.restart(method=method):
                self.say(f"method {method} (same seed, new run)")
        elif key == pg.K_r:
            if self.restart(seed=self.seed + 1):
                self.say(f"new sample, seed {self.seed}")
        elif key == pg.K_p:
            self.typing = self.prompt or ""
            self.pg.key.start_text_input()
        elif key == pg.K_s:
            self.save_gif()

    def _handle_typing(self, event) -> None:
        pg = self.pg
        if event.type == pg.TEXTINPUT:
            self.typing += event.text
        elif event.type == pg.KEYDOWN:
            if event.key == pg.K_BACKSPACE:
                self.typing = self.typing[:-1]
            elif event.key == pg.K_ESCAPE:
                self.typing = None
            elif event.key in (pg.K_RETURN, pg.K_KP_ENTER):
                prompt, self.typing = self.typing, None
                if self.restart(prompt=prompt or None):
                    self.say(f"continuing the prompt {prompt!r}" if prompt else "no prompt")

    def save_gif(self) -> None:
        """S: write the run so far (frames 0 .. the one shown) to save_dir; rendered across frames."""
        if self.gif is not None and not self.gif.finished:
            self.say("still saving the last GIF")
            return
        name = f"mdlm-{self.traj.method}-seed{self.traj.seed}-{time.strftime('%Y%m%d-%H%M%S')}.gif"
        try:
            self.gif = GifWriter(self.painter, self.traj, self.save_dir / name,
                                 frames=gif_frames(self.frame + 1, max(1, self.frame // 200)))
        except ValueError as e:
            self.say(str(e), error=True)

    # -- the loop -----------------------------------------------------------------------------

    def update(self, dt: float) -> None:
        """Move the playhead, report a finished GIF or a sampler error, and decide when to close."""
        if self.playing:
            self.playhead = min(self.playhead + self.speed * dt, float(self.traj.num_frames - 1))
            if self.traj.finished(self.frame):
                self.playing = False
        if self.traj.error is not None:
            self.say(f"sampler error: {self.traj.error}", error=True, seconds=1.0)
        if self.gif is not None:
            if not self.gif.thread:
                self.gif.work(budget_s=0.004)                      # about one frame of the GIF per loop
                self.say(f"saving GIF... {100 * self.gif.progress:.0f}%", seconds=1.0)
            elif self.gif.finished:
                if self.gif.error:
                    self.say(f"could not save the GIF: {self.gif.error}", error=True)
                else:
                    self.say(f"saved {self.gif.path}")
                self.gif = None
        if self.linger is not None and self.traj.finished(self.frame):
            self.done_at = self.done_at or time.monotonic()
            if not self.key_pressed and time.monotonic() - self.done_at > self.linger:
                self.running = False

    def status(self) -> str:
        state = "playing" if self.playing else ("done" if self.traj.finished(self.frame) else
                                                 "paused" if self.frame < self.traj.num_frames - 1 or self.traj.done
                                                 else "paused")
        waiting = "   computing..." if self.playing and self.frame >= self.traj.num_frames - 1 and not self.traj.done else ""
        return self.painter.status(self.traj, self.frame, extra=f"   {state} at {self.speed} steps/s{waiting}")

    def draw(self) -> None:
        if self.typing is not None:
            message, error = f"prompt: {self.typing}_      (Enter: sample from it, Esc: cancel)", False
        elif time.monotonic() < self.message_until:
            message, error = self.message, self.message_is_error
        else:
            message, error = "", False
        self.painter.draw(self.screen, self.traj, self.frame, status=self.status(), message=message,
                          message_is_error=error)
        self.pg.display.flip()

    def run(self, max_frames: int | None = None) -> str:
        """The event loop, until Q / Esc / the close box (or max_frames loop iterations). Returns the text shown."""
        frames, last = 0, time.perf_counter()
        # A full garbage collection walks every object (torch's, the tokenizer's...): 100-150 ms here.
        # Frozen objects are never walked, so a collection during the loop only sees new ones.
        gc.freeze()
        try:
            while self.running and (max_frames is None or frames < max_frames):
                start, start_cpu = time.perf_counter(), time.thread_time()
                for event in self.pg.event.get():
                    self.handle(event)
                self.update(start - last)
                if self.running:
                    self.draw()
                last = start
                self.frame_times.append(time.perf_counter() - start)
                self.frame_cpu_times.append(time.thread_time() - start_cpu)
                frames += 1
                self.clock.tick(self.fps)
            return self.traj.text(self.frame)
        finally:
            if not self.running or max_frames is None:
                self.close()

    def close(self) -> None:
        gc.unfreeze()
        self._stop.set()
        if self._worker is not None:
            self._worker.join(timeout=2.0)
        if self.gif is not None and self.gif.thread is not None:
            self.gif.thread.join()                                      # a GIF being written is finished
        self.pg.display.quit()


# ---------------------------------------------------------------------------------------------
# What the CLI calls
# ---------------------------------------------------------------------------------------------

def check_lengths(model, tokenizer, seq_len: int, prompt: str | None) -> list[int]:
    """The prompt's ids, after checking that seq_len fits the model and the prompt fits seq_len (one line)."""
    check_command_args(seq_len=seq_len)
    max_len = getattr(getattr(model, "config", None), "seq_len", None)
    if isinstance(max_len, int) and seq_len > max_len:
        raise VisualizeError(f"seq_len={seq_len} is longer than the model's {max_len} positions; "
                             f"use --seq-len {max_len} or less")
    prompt_ids = tokenizer.encode(prompt) if prompt else []
    if len(prompt_ids) > seq_len:
        raise VisualizeError(f"the prompt is {len(prompt_ids)} tokens, longer than the sequence ({seq_len} tokens); "
                             "shorten it or raise --seq-len")
    return prompt_ids


def check_command_args(*, seq_len=None, steps=None, seed=0, num=1, stride=None) -> None:
    """The options of `sample` and `visualize`, checked before the checkpoint is loaded (one line each)."""
    for name, value in (("--seq-len", seq_len), ("--steps", steps), ("--num (num_samples)", num),
                        ("--stride", stride)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise VisualizeError(f"{name} must be an int >= 1, got {value!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not -2**63 <= seed < 2**64:
        raise VisualizeError(f"--seed must be an int in [-2**63, 2**64), what torch.Generator accepts, got {seed!r}")


def is_causal(model) -> bool:
    """True for an AR twin (ModelConfig.causal): it is sampled left to right (ar.py), not by unmasking."""
    return getattr(getattr(model, "config", None), "causal", False) is True


def ar_start(tokenizer) -> list[int]:
    """The token an AR sample starts from when no prompt is given: a line break (a window of the text starts
    from a given token, ar.ar_sample)."""
    return tokenizer.encode("\n")[:1]


def load_for_sampling(checkpoint: str | Path | None):
    """(model, tokenizer) from a checkpoint, or from the shipped one under checkpoints/."""
    path = checkpoint if checkpoint is not None else find_shipped_checkpoint()
    if path is None:
        raise CheckpointError(f"no checkpoint under {CHECKPOINTS}; pass --checkpoint PATH "
                              "(train one with `python -m mdlm_course train`)")
    model, tokenizer, _ = load_pretrained(path)
    if tokenizer is None:
        raise CheckpointError(f"{path}: the checkpoint has no tokenizer, so its tokens cannot be shown as text")
    return model, tokenizer


def visualize_command(checkpoint: str | Path | None = None, *, method: str = "ancestral", steps: int | None = None,
                      seq_len: int | None = None, seed: int = 0, temperature: float = 1.0,
                      prompt: str | None = None, record: str | Path | None = None, stride: int | None = None,
                      linger: float | None = None) -> int:
    """`python -m mdlm_course visualize`: open the window, or with record=PATH write a GIF and exit."""
    check_temperature(temperature)
    check_command_args(seq_len=seq_len, steps=steps, seed=seed, stride=stride)
    if record is not None:
        check_output_path(record, writable=True)
        import_pillow()
    elif not display_available():
        raise VisualizeError("no display (neither DISPLAY nor WAYLAND_DISPLAY is set): "
                             "add --record out.gif to render the denoising to a GIF instead")
    import_pygame()
    model, tokenizer = load_for_sampling(checkpoint)
    seq_len = model.config.seq_len if seq_len is None else seq_len
    check_steps(steps, seq_len, method)
    if record is not None:
        path = record_gif(model, tokenizer, record, seq_len=seq_len, steps=steps, method=method,
                          temperature=temperature, prompt=prompt, seed=seed, stride=stride)
        print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")
    else:
        print(DenoisingWindow(model, tokenizer, seq_len=seq_len, steps=steps, method=method, temperature=temperature,
                              prompt=prompt, seed=seed, linger=linger).run())
    if is_causal(model):
        print(f"note: {checkpoint or 'the checkpoint'} is an AR model: it wrote left to right (ar_sample); "
              "--method and --steps do not apply", file=sys.stderr)
    return 0


def sample_command(checkpoint: str | Path | None = None, *, prompt: str | None = None, method: str = "ancestral",
                   steps: int | None = None, num: int = 1, seq_len: int | None = None, seed: int = 0,
                   temperature: float = 1.0, out=None) -> int:
    """`python -m mdlm_course sample`: print `num` samples, each after a '--- sample i' line."""
    check_temperature(temperature)
    check_command_args(seq_len=seq_len, steps=steps, seed=seed, num=num)
    out = out or sys.stdout
    model, tokenizer = load_for_sampling(checkpoint)
    seq_len = model.config.seq_len if seq_len is None else seq_len
    check_steps(steps, seq_len, method)
    prompt_ids = check_lengths(model, tokenizer, seq_len, prompt)
    generator = torch.Generator().manual_seed(seed)
    if is_causal(model):                                            # an AR twin: left to right, one token a step
        x = ar_sample(model, num_samples=num, seq_len=seq_len, prompt=torch.tensor(prompt_ids or ar_start(tokenizer)),
                      mask_id=tokenizer.mask_id, temperature=temperature, generator=generator)
        print(f"note: {checkpoint or 'the checkpoint'} is an AR model: sampled left to right (ar_sample); --method "
              "and --steps do not apply", file=sys.stderr)
    else:
        x = sample(model, mask_id=tokenizer.mask_id, num_samples=num, seq_len=seq_len,
                   steps=seq_len if steps is None else steps, method=method, temperature=temperature,
                   prompt=torch.tensor(prompt_ids, dtype=torch.long) if prompt_ids else None, generator=generator)
    for i, row in enumerate(x.tolist()):
        out.write(f"--- sample {i + 1}\n{render(tokenizer, row)}\n")   # control characters shown as U+FFFD
    out.flush()
    return 0


# ---------------------------------------------------------------------------------------------
# The training curve
# ---------------------------------------------------------------------------------------------

def plot_history(history: dict, *, smooth: int = 20, ax=None):
    """Training loss per step (faint), its running mean over `smooth` steps, and the validation points:
    "val_nelbo" for an MDLM run, "val_nll" (next-token NLL) for an AR twin. Returns the Axes."""
    import matplotlib.pyplot as plt

    check_history(history)
    check_number("plot_history", "smooth", smooth, integer=True, lo=0)
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 4))
    steps, loss = np.asarray(history["step"]), np.asarray(history["loss"])
    ax.plot(steps, loss, color="tab:blue", alpha=0.3, lw=0.8, label="train loss")
    if len(loss) >= smooth > 1:
        kernel = np.ones(smooth) / smooth
        ax.plot(steps[smooth - 1:], np.convolve(loss, kernel, mode="valid"), color="tab:blue",
                label=f"train, mean of {smooth} steps")
    if history.get("val_step") and "val_nelbo" in history:
        ax.plot(history["val_step"], history["val_nelbo"], "o-", color="tab:red", label="val NELBO (fixed t, masks)")
    elif history.get("val_step") and "val_nll" in history:
        ax.plot(history["val_step"], history["val_nll"], "o-", color="tab:red", label="val next-token NLL")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("nats / token")
    ax.grid(alpha=0.3)
    ax.legend()
    return ax


def check_history(history) -> None:
    """plot_history's door: a dict with equal-length step and loss lists (a checkpoint saved without history
    stores null)."""
    if not isinstance(history, dict) or not isinstance(history.get("step"), list) \
            or not isinstance(history.get("loss"), list):
        raise VisualizeError(f"plot_history needs a history dict with 'step' and 'loss' lists (TrainResult.history, "
                             f"or a checkpoint's meta['history']), got {type(history).__name__}; this checkpoint "
                             "may have been saved without one")
    for x, y in (("step", "loss"), ("val_step", "val_nelbo"), ("val_step", "val_nll")):
        if isinstance(history.get(y), list) and len(history.get(x) or []) != len(history[y]):
            raise VisualizeError(f"history lists {x!r} and {y!r} have different lengths "
                                 f"({len(history.get(x) or [])} and {len(history[y])}); the history is damaged")
