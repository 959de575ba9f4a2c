"""README.md's configuration table is the user's reference: it must name every setting
with the default the code really has."""

from __future__ import annotations

import dataclasses
import re

from processes import ROOT

from chat_app.settings import Settings


def test_configuration_table_lists_every_setting_with_its_default() -> None:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    rows = dict(re.findall(r"^\| `([A-Z_]+)` \| ([^|]+) \|", section, re.M))
    names = {f.name.upper() for f in dataclasses.fields(Settings)}
    assert names <= set(rows), f"settings missing from README.md: {sorted(names - set(rows))}"
    defaults = Settings(instance_id="x")
    for f in dataclasses.fields(Settings):
        documented = rows[f.name.upper()].strip()
        value = getattr(defaults, f.name)
        if f.name == "instance_id":
            assert documented.startswith("random")
        elif value is None:
            assert documented == "unset", f.name
        elif isinstance(value, int | float):
            assert float(documented.strip("`")) == value, (f.name, documented, value)
        else:
            assert documented == f"`{value}`", (f.name, documented, value)
