"""The one cattrs converter: trioflow's records and graphs cross the JSON boundary here only."""

from __future__ import annotations

import cattrs.preconf.json

converter = cattrs.preconf.json.make_converter(forbid_extra_keys=True)
"""Unstructures attrs data to JSON-safe dicts and back; used by every `to_dict`/`from_dict`."""
