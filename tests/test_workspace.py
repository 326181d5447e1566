"""kpt.toml: tree names are names, never paths (issue 18, item 5)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from kpatch_tool import workspace as wsmod
from kpatch_tool.cli import main
from kpatch_tool.errors import UsageError


@pytest.mark.parametrize("name", ["../../../outside", "/abs/olute", "a/b", "..", ".hidden", "-rf",
                                  "a..b", "x.lock", "sp ace", "new\nline", ""])
def test_a_tree_name_that_is_not_a_name_is_refused_at_load(tmp_path, series_repo, name):
    root = tmp_path / "ws"
    root.mkdir()
    (root / "kpt.toml").write_text(f'cache_dir = "{tmp_path / "cache"}"\n'
                                   f'[trees.{name!r}]\nsource = "{series_repo}"\n'.replace("'", '"'))
    with pytest.raises(UsageError, match=r"kpt.toml: \[trees\..*\]: not a valid tree name"):
        wsmod.load(root)
    r = CliRunner().invoke(main, ["--workspace", str(root), "series", "import", "v1..work",
                                  "--tree", name, "--name", "x"])
    assert r.exit_code == 2, r.output
    assert "not a valid tree name" in r.output and "Traceback" not in r.output
    # Nothing was written anywhere, inside the workspace or out of it.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["linux-src", "ws"]
    assert sorted(p.name for p in root.iterdir()) == ["kpt.toml"]


def test_good_tree_names_load(tmp_ws, series_repo):
    ws = tmp_ws(f'[trees."linux-6.12"]\nsource = "{series_repo}"\n[trees.\"xen_4.17\"]\nsource = "{series_repo}"\n')
    assert sorted(ws.trees) == ["linux-6.12", "xen_4.17"]
