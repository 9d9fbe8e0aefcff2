"""model.prepare_conversions() leaves no conversion function to be made at the first use (the
manager calls it before serving: making them holds the event loop for 30-50 ms). Each case in a
fresh interpreter, whose converter has made nothing yet."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = """
import sys
import yaml
from reconciler import builder, model

if sys.argv[1] == "prepared":
    model.prepare_conversions()
made = []
for name in ("make_dict_structure_fn", "make_dict_unstructure_fn"):
    original = getattr(model, name)
    setattr(model, name, lambda *a, _o=original, **k: made.append(a[0]) or _o(*a, **k))
samples = list(yaml.safe_load_all(open("config/samples/nimbuspolicies.yaml")))
for sample in samples:
    policy = model.from_dict(model.NimbusPolicy, sample)
    for built in builder.desired_policies(policy)[0]:
        model.to_dict(built)
print(len(made))
"""


def made_at_first_use(condition: str) -> int:
    result = subprocess.run([sys.executable, "-c", SCRIPT, condition], cwd=REPO,
                            capture_output=True, text=True, check=True)
    return int(result.stdout)


def test_nothing_left_to_make_once_prepared() -> None:
    assert made_at_first_use("prepared") == 0
    assert made_at_first_use("cold") > 5  # what it spares
