"""Progress reporting: a live bar on a terminal, one line per epoch otherwise."""
import sys
import time


def format_seconds(seconds):
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class EpochProgress:
    def __init__(self, epoch, epochs, steps, run_start, stream=None):
        self.stream = stream or sys.stderr
        self.live = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.epoch, self.epochs, self.steps = epoch, epochs, steps
        self.start = time.time()
        self.run_start = run_start

    def update(self, step, loss, acc):
        if not self.live:
            return
        done = step / max(self.steps, 1)
        bar = "#" * int(24 * done) + "." * (24 - int(24 * done))
        elapsed = time.time() - self.start
        eta = elapsed / done - elapsed if done > 0 else 0.0
        self.stream.write(
            f"\repoch {self.epoch + 1}/{self.epochs} [{bar}] {step}/{self.steps} "
            f"loss {loss:.3f} acc {acc:5.1f}% elapsed {format_seconds(elapsed)} "
            f"eta {format_seconds(eta)}  ")
        self.stream.flush()

    def finish(self, message, epochs_done_this_run, epochs_left):
        per_epoch = (time.time() - self.run_start) / max(epochs_done_this_run, 1)
        line = (f"epoch {self.epoch + 1}/{self.epochs} {message} "
                f"time {format_seconds(time.time() - self.start)} "
                f"total {format_seconds(time.time() - self.run_start)} "
                f"eta {format_seconds(per_epoch * epochs_left)}")
        if self.live:
            self.stream.write("\r" + " " * 110 + "\r")
        print(line, file=self.stream, flush=True)
