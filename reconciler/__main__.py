# Signals held from the first moment (until cli.main knows the mode; heldsignals.py).
from .heldsignals import HeldSignals

held = HeldSignals()
held.hold()

from .cli import main  # noqa: E402 (after the hold: loading it takes a while)

raise SystemExit(main(held=held))
