"""`python -m desta_audio.train CONFIG [overrides]`: the entry point for `torchrun -m desta_audio.train ...`."""

from desta_audio.train.cli import app

if __name__ == "__main__":
    app(prog_name="desta train")
