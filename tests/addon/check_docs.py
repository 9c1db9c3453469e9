#!/usr/bin/env python3
"""ansible/group_vars/rbd_row_gateways.yml documents every default of the
rbd_row role (roles/rbd_row/defaults/main.yml) with the same value, as a
`# name: value` line (or `name: value` for the ones an operator sets), and
documents nothing else."""
import pathlib
import re
import sys

import yaml

root = pathlib.Path(__file__).resolve().parents[2] / "ansible"
defaults = yaml.safe_load((root / "roles/rbd_row/defaults/main.yml").read_text())
documented = {}
for line in (root / "group_vars/rbd_row_gateways.yml").read_text().splitlines():
    m = re.match(r"^(?:# )?(rbd_row_[a-z_]+): (.*)$", line)
    if m:
        documented[m.group(1)] = yaml.safe_load(m.group(2))

errors = [f"{k}: not documented" for k in defaults if k not in documented]
errors += [f"{k}: documented but no such default" for k in documented if k not in defaults]
errors += [
    f"{k}: default {defaults[k]!r}, documented {documented[k]!r}"
    for k in defaults
    if k in documented and documented[k] != defaults[k]
]
if errors:
    sys.exit("group_vars/rbd_row_gateways.yml vs defaults/main.yml:\n  " + "\n  ".join(errors))
print(f"[addon] group_vars documents all {len(defaults)} role defaults")
