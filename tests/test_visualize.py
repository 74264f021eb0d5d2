"""The denoising visualiser: the recorded trajectory, the pygame window (headless), GIF export, the
terminal view, the CLI's `visualize` and `sample`, and the training-curve plot.

The window runs on SDL's dummy video driver, set here before pygame is imported; keyboard input is
posted with pygame.event.post, as a person's key presses would arrive.
"""
import io
import os
import sys

os.environ["SDL_VIDEODRIVER"] = "dummy"
os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

pygame = pytest.importorskip("pygame")
Image = pytest.importorskip("PIL.Image")

from mdlm_course import cli, visualize  # noqa: E402
from mdlm_course.checkpoint import save_checkpoint  # noqa: E402
from mdlm_course.model import MDLM, ModelConfig  # noqa: E402
from mdlm_course.sampling import denoise, token_probs  # noqa: E402
from mdlm_course.tokenizer import BPETokenizer  # noqa: E402
from mdlm_course.visualize import (COLORS, MASK_GLYPH, MIN_TEMPERATURE, DenoisingWindow, Painter,  # noqa: E402
                                   Trajectory, gif_frames, plot_history, record_gif, show_denoising)

TEXT = "ROMEO: to be or not to be, that is the question.\nJULIET: whether 'tis nobler in the mind to suffer\n" * 20


@pytest.fixture(scope="module")
def tok():
    return BPETokenizer.train(TEXT, 300, verbose=False)


@pytest.fixture(scope="module")
def model(tok):
    """An untrained tiny MDLM: enough for windows and GIFs, which show whatever it draws."""
    torch.manual_seed(0)
    return MDLM(ModelConfig.preset("tiny", vocab_size=tok.vocab_size, seq_len=256)).eval()


@pytest.fixture(scope="module")
def checkpoint(tok, model, tmp_path_factory):
    return save_checkpoint(tmp_path_factory.mktemp("run"), model=model, step=1, tokenizer=tok)


def key(k, mod=0):
    pygame.event.post(pygame.event.Event(pygame.KEYDOWN, key=k, mod=mod, unicode="", scancode=0))


def finish(win):
    """Let the worker thread record the whole sample."""
    win._worker.join(timeout=30)
    assert win.traj.done


def masked_pixels(surface, bottom: int) -> int:
    """Pixels of the [MASK] block colour above `bottom` (the legend below also shows one block)."""
    rgb = pygame.surfarray.array3d(surface)[:, :bottom]                # (W, H, 3)
    return int((rgb == np.array(COLORS["mask"])).all(-1).sum())


# ---------------------------------------------------------------------------------------------
# The recorded trajectory
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["ancestral", "first_hitting", "confidence"])
def test_trajectory_frames_are_the_samplers_steps(tok, model, method):
    """Frame k of the record is exactly x_t after step k of denoise() with the same seed."""
    traj = Trajectory(model, tok, seq_len=32, steps=12, method=method, prompt="ROMEO:", seed=3)
    traj.run()
    ref = denoise(model, mask_id=tok.mask_id, num_samples=1, seq_len=32, steps=12, method=method,
                  prompt=torch.tensor(tok.encode("ROMEO:")), generator=torch.Generator().manual_seed(3))
    steps = list(ref)
    assert traj.num_frames == len(steps) + 1 == traj.total_steps + 1
    assert (traj.ids(0)[:traj.num_prompt] == tok.encode("ROMEO:")).all()
    assert (traj.ids(0)[traj.num_prompt:] == tok.mask_id).all()
    for step, t, xt, nfe in steps:
        assert (traj.ids(step) == xt[0].numpy()).all()
        assert traj.nfes[step] == nfe and traj.times[step] == pytest.approx(float(t[0]))
    assert tok.mask_id not in traj.ids(traj.num_frames - 1)


def test_revealed_tokens_carry_the_probability_they_were_drawn_with(tok, model):
    """p_i read from the sampler's own call equals p_theta(token | x_t before the step), recomputed.

    rtol=1e-5: the same float32 network on the same input, then float64 softmax; only the batch
    of the call may differ.
    """
    traj = Trajectory(model, tok, seq_len=24, steps=8, method="ancestral", temperature=0.7, seed=1)
    traj.run()
    for pos in range(24):
        r = int(traj.reveal_step[pos])
        before = torch.from_numpy(traj.ids(r - 1))[None]
        with torch.no_grad():
            logits = model(before, torch.ones(1))[0, pos][None]
        p = token_probs(logits, tok.mask_id, 0.7)[0, traj.tokens[pos]]
        torch.testing.assert_close(float(traj.prob[pos]), float(p), rtol=1e-5, atol=1e-9)


# ---------------------------------------------------------------------------------------------
# The window
# ---------------------------------------------------------------------------------------------

def test_window_runs_a_number_of_frames_then_quits(tok, model):
    win = DenoisingWindow(model, tok, seq_len=32, steps=16)
    try:
        win.run(max_frames=5)
        assert len(win.frame_times) == 5 and win.running
        key(pygame.K_q)
        win.run(max_frames=5)
        assert not win.running and len(win.frame_times) == 6        # Q ends the loop at once
    finally:
        win.close()


def test_keys_change_the_state(tok, model, tmp_path):
    win = DenoisingWindow(model, tok, seq_len=32, steps=16, fps=1000, save_dir=tmp_path)
    try:
        finish(win)
        assert win.playing
        key(pygame.K_SPACE)                                            # pause
        win.run(max_frames=1)
        assert not win.playing
        win.playhead = 5.0
        key(pygame.K_LEFT)
        key(pygame.K_LEFT)
        key(pygame.K_RIGHT)
        win.run(max_frames=1)
        assert win.frame == 4 and not win.playing
        for _ in range(40):                                            # never past the recorded history
            key(pygame.K_RIGHT)
        win.run(max_frames=1)
        assert win.frame == win.traj.num_frames - 1

        speed = win.speed
        key(pygame.K_EQUALS)
        win.run(max_frames=1)
        assert win.speed > speed
        key(pygame.K_MINUS)
        key(pygame.K_MINUS)
        win.run(max_frames=1)
        assert win.speed < speed

        key(pygame.K_t)
        win.run(max_frames=1)
        assert win.temperature == pytest.approx(1.1) and win.traj.temperature == pytest.approx(1.1)
        for _ in range(30):
            key(pygame.K_t, pygame.KMOD_LSHIFT)
        win.run(max_frames=1)
        assert win.temperature == MIN_TEMPERATURE > 0 and win.traj.temperature == MIN_TEMPERATURE

        seen = []
        for _ in range(3):
            key(pygame.K_m)
            win.run(max_frames=1)
            seen.append(win.traj.method)
        assert seen == ["first_hitting", "confidence", "ancestral"]

        old = win.traj
        key(pygame.K_r)                                                # new sample: next seed
        win.run(max_frames=1)
        assert win.traj is not old and win.seed == 1 and win.traj.seed == 1 and win.playing
        finish(win)
        assert (win.traj.ids(win.traj.num_frames - 1) != old.ids(old.num_frames - 1)).any()

        key(pygame.K_p)                                                # type a prompt
        pygame.event.post(pygame.event.Event(pygame.TEXTINPUT, text="ROMEO:x"))
        key(pygame.K_BACKSPACE)
        key(pygame.K_RETURN)
        win.run(max_frames=1)
        assert win.prompt == "ROMEO:" and win.traj.prompt == "ROMEO:"
        finish(win)
        assert win.traj.text().startswith("ROMEO:")

        key(pygame.K_p)                                                # too long: refused, said in one line
        pygame.event.post(pygame.event.Event(pygame.TEXTINPUT, text="to be or not " * 30))
        key(pygame.K_RETURN)
        win.run(max_frames=1)
        assert win.prompt == "ROMEO:" and win.message_is_error and "longer than the sequence" in win.message

        win.playhead = float(win.traj.num_frames - 1)
        key(pygame.K_s)                                                # save a GIF of the run so far
        for _ in range(200):
            win.run(max_frames=1)
            if win.gif is None:
                break
        saved = list(tmp_path.glob("*.gif"))
        assert len(saved) == 1 and Image.open(saved[0]).n_frames == win.traj.num_frames

        key(pygame.K_ESCAPE)
        win.run(max_frames=1)
        assert not win.running
    finally:
        win.close()


def test_frames_differ_and_the_finished_sample_has_no_masked_cell(tok, model):
    win = DenoisingWindow(model, tok, seq_len=64, steps=16, size=(900, 500))
    try:
        finish(win)
        bottom = 500 - 2 * (win.painter.font(22).get_linesize() + 10)  # above the legend
        shots = []
        for k in (0, 4, 8, 16):
            win.playhead, win.playing = float(k), False
            win.draw()
            shots.append(pygame.surfarray.array3d(win.screen).copy())
            if k == 0:
                assert masked_pixels(win.screen, bottom) > 0
        for a, b in zip(shots, shots[1:]):
            assert (a != b).any()
        assert masked_pixels(win.screen, bottom) == 0 and tok.mask_id not in win.traj.ids(16)
    finally:
        win.close()


def test_window_rewraps_when_resized(tok, model):
    painter = Painter(tok)
    ids = np.full(64, tok.mask_id)
    wide, _, _ = painter.layout(ids, 22, 900)
    narrow, _, _ = painter.layout(ids, 22, 300)
    lines = lambda cells: len({y for _, _, y, _, _ in cells})          # noqa: E731
    assert lines(narrow) > lines(wide) > 1                             # the text re-wraps to the width
    assert all(x + w <= 300 for _, x, _, w, _ in narrow)


def test_worst_frame_time_with_the_tiny_model(tok, model, tmp_path):
    """The loop never waits for the network (a worker thread samples): every frame < 50 ms, even while
    a GIF is being saved. The issue's requirement; measured around 5-20 ms on a busy 2-core CPU."""
    win = DenoisingWindow(model, tok, seq_len=256, steps=256, fps=1000, save_dir=tmp_path)
    try:
        win.speed = 200
        win.run(max_frames=60)
        key(pygame.K_s)
        win.run(max_frames=60)
        worst = max(win.frame_times[1:])                               # the first frame sets up the fonts
        worst_cpu = max(win.frame_cpu_times[1:])
        print(f"worst frame time {1000 * worst:.1f} ms wall, {1000 * worst_cpu:.1f} ms of the loop's own CPU, "
              f"over {len(win.frame_times)} frames")
        assert worst_cpu < 0.050                                       # the loop's own work per frame
        if os.getloadavg()[0] < (os.cpu_count() or 1):                 # wall time means something only when
            assert worst < 0.050                                       # other processes leave the CPUs free
    finally:
        win.close()


def test_window_lingers_then_closes_by_itself(tok, model):
    win = DenoisingWindow(model, tok, seq_len=16, steps=4, linger=0.05, fps=200)
    finish(win)
    win.speed = 500
    win.run(max_frames=400)
    assert not win.running


# ---------------------------------------------------------------------------------------------
# GIF export
# ---------------------------------------------------------------------------------------------

def _last_frame(path):
    im = Image.open(path)
    im.seek(im.n_frames - 1)
    return im.n_frames, np.asarray(im.convert("RGB"))


def test_gif_has_one_frame_per_step_and_ends_unmasked(tok, model, tmp_path):
    path = record_gif(model, tok, tmp_path / "run.gif", seq_len=48, steps=20, stride=1)
    n, last = _last_frame(path)
    assert n == 20 + 1                                                 # the all-[MASK] start + one per step
    first = np.asarray(Image.open(path).convert("RGB"))
    blocks = [int((im[: im.shape[0] - 80] == np.array(COLORS["mask"])).all(-1).sum())   # above the legend
              for im in (first, last)]
    # The start is 48 blocks of ~20x30 px; at the end a few edge pixels of anti-aliased text may be
    # quantised to the block colour, never a whole block.
    assert blocks[0] > 48 * 300 and blocks[1] < 100, blocks
    strided = record_gif(model, tok, tmp_path / "strided.gif", seq_len=48, steps=20, stride=6)
    assert Image.open(strided).n_frames == len(gif_frames(21, 6)) == 5           # steps 0, 6, 12, 18, 20


def test_gif_of_256_tokens_stays_under_2_mb(tok, model, tmp_path):
    path = record_gif(model, tok, tmp_path / "big.gif", seq_len=256, steps=256)
    n, last = _last_frame(path)
    assert path.stat().st_size < 2_000_000
    assert n == 87                                                     # stride 3: 0, 3, ..., 255, and 256


def test_gif_frames():
    assert gif_frames(6, 2) == [0, 2, 4, 5]
    assert gif_frames(1, 1) == [0]
    with pytest.raises(ValueError, match="stride"):
        gif_frames(5, 0)


# ---------------------------------------------------------------------------------------------
# Bad input: one clear line each
# ---------------------------------------------------------------------------------------------

def run_cli(argv, capsys):
    rc = cli.main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize("argv, needle", [
    (["--temperature", "0"], "temperature must be a finite number > 0"),
    (["--temperature", "-1"], "temperature must be a finite number > 0"),
    (["--checkpoint", "{tmp}/missing"], "no such checkpoint"),
    (["--record", "{tmp}/no/such/folder/out.gif"], "does not exist"),
    (["--prompt", "to be or not " * 60], "longer than the sequence"),
    (["--seq-len", "999"], "longer than the model's"),
], ids=["temperature-0", "temperature-negative", "missing-checkpoint", "record-folder", "long-prompt", "seq-len"])
def test_bad_input_gives_one_line(argv, needle, checkpoint, tmp_path, capsys):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    if "--checkpoint" not in argv:
        argv += ["--checkpoint", str(checkpoint)]
    if "--record" not in argv:
        argv += ["--record", str(tmp_path / "out.gif")]
    rc, _, err = run_cli(["visualize", *argv], capsys)
    assert rc == 2 and needle in err and err.count("\n") == 1, err


def test_broken_checkpoint_gives_one_line(tok, model, tmp_path, capsys):
    ck = save_checkpoint(tmp_path / "run", model=model, step=1, tokenizer=tok)
    (ck / "model.safetensors").write_bytes(b"not a tensor file")
    rc, _, err = run_cli(["visualize", "--checkpoint", str(ck), "--record", str(tmp_path / "x.gif")], capsys)
    assert rc == 2 and str(ck) in err and err.count("\n") == 1, err


def test_no_display_without_record_says_so(checkpoint, monkeypatch, capsys):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.setattr(sys, "platform", "linux")
    assert not visualize.display_available()
    rc, _, err = run_cli(["visualize", "--checkpoint", str(checkpoint)], capsys)
    assert rc == 2 and "no display" in err and "--record" in err and err.count("\n") == 1
    monkeypatch.setenv("WAYLAND_DISPLAY", "wayland-0")
    assert visualize.display_available()
    monkeypatch.setattr(sys, "platform", "darwin")
    monkeypatch.delenv("WAYLAND_DISPLAY")
    assert visualize.display_available()


def test_missing_packages_are_named(monkeypatch):
    monkeypatch.setitem(sys.modules, "pygame", None)
    with pytest.raises(visualize.VisualizeError, match="pip install pygame-ce"):
        visualize.import_pygame()
    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(visualize.VisualizeError, match="pip install pillow"):
        visualize.import_pillow()


def test_window_refuses_bad_temperature_before_opening(tok, model):
    for bad in (0, -0.5, float("inf")):
        with pytest.raises(ValueError, match="temperature"):
            DenoisingWindow(model, tok, seq_len=16, steps=4, temperature=bad)


# ---------------------------------------------------------------------------------------------
# The CLI, the terminal view, the plot
# ---------------------------------------------------------------------------------------------

def test_cli_record_and_sample(checkpoint, tmp_path, capsys):
    out_gif = tmp_path / "cli.gif"
    rc, out, _ = run_cli(["visualize", "--checkpoint", str(checkpoint), "--record", str(out_gif),
                          "--seq-len", "24", "--steps", "6", "--method", "confidence", "--prompt", "ROMEO:"], capsys)
    assert rc == 0 and out_gif.exists() and Image.open(out_gif).n_frames == 7 and "wrote" in out
    rc, out, _ = run_cli(["sample", "--checkpoint", str(checkpoint), "--prompt", "ROMEO:", "--num", "3",
                          "--seq-len", "24", "--steps", "6"], capsys)
    assert rc == 0 and out.count("--- sample") == 3
    assert all(s.split("\n", 1)[1].startswith("ROMEO:") for s in out.split("--- sample ")[1:])


class FakeTTY(io.StringIO):
    def isatty(self):
        return True


@pytest.mark.parametrize("term, escapes", [("xterm-256color", True), ("dumb", False)])
def test_terminal_view_uses_plain_frames_on_a_dumb_terminal(tok, model, monkeypatch, term, escapes):
    monkeypatch.setenv("TERM", term)
    out = FakeTTY()
    text = show_denoising(model, tok, seq_len=16, steps=4, prompt="ROMEO:", fps=1e6, out=out)
    assert ("\x1b[" in out.getvalue()) is escapes
    assert text.startswith("ROMEO:") and MASK_GLYPH not in text
    if not escapes:
        assert out.getvalue().count("--- step") == 4


@pytest.mark.parametrize("val_key", ["val_nelbo", "val_nll"])
def test_plot_history_draws_the_history(val_key):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = list(range(1, 41))
    history = {"step": steps, "loss": [6 - 0.05 * s for s in steps], "val_step": [10, 20, 40],
               val_key: [5.5, 5.0, 4.2]}
    ax = plot_history(history, smooth=10)
    lines = {ln.get_label(): ln for ln in ax.get_lines()}
    train = lines["train loss"]
    np.testing.assert_array_equal(train.get_xdata(), steps)
    np.testing.assert_allclose(train.get_ydata(), history["loss"])
    mean = lines["train, mean of 10 steps"]
    np.testing.assert_allclose(mean.get_ydata(), np.convolve(history["loss"], np.ones(10) / 10, "valid"))
    val = next(ln for label, ln in lines.items() if label.startswith("val"))
    np.testing.assert_array_equal(val.get_xdata(), [10, 20, 40])
    np.testing.assert_allclose(val.get_ydata(), history[val_key])
    assert ("NELBO" in val.get_label()) is (val_key == "val_nelbo")
    plt.close(ax.figure)


def test_render_draws_control_characters_as_a_replacement_glyph(tok):
    """ESC or CR decoded from byte tokens must not reach a terminal (or a font) as themselves."""
    ids = [27, *tok.encode("[31mred"), tok.mask_id, 13, 9, 10, 65]      # ESC, text, [MASK], CR, TAB, LF, 'A'
    text = visualize.render(tok, ids)
    assert "\x1b" not in text and "\r" not in text and text.startswith("\ufffd[31mred" + MASK_GLYPH + "\ufffd")
    assert text.endswith("\t\nA")
