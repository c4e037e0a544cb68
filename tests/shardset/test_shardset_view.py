"""Reading views (DESIGN §13): a view over v1 shard sets resolves like a manifest, with its
exclusions, pooled stats and one-line errors for stale or mismatched sources."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fixtures_training import write_shard_set, write_view

from musicoder.shardset.format import ShardFormatError
from musicoder.shardset.manifest import read_manifest


def _keys(root, shard: str) -> list[str]:
    return json.loads((root / shard.replace(".tar", ".json")).read_text())["keys"]


@pytest.mark.timeout(60)
def test_view_resolves_sources_with_exclusions_and_pooled_stats(
    uneven_shard_set, few_shard_set, tmp_path
):
    drop = _keys(uneven_shard_set, "shard-000000.tar")[:4]
    whole = _keys(uneven_shard_set, "shard-000003.tar")  # its only sample: the shard goes
    write_view(
        tmp_path / "v" / "view.json",
        [
            (uneven_shard_set, {"shard-000000.tar": drop, "shard-000003.tar": whole}),
            (few_shard_set, {}),
        ],
    )
    a, b = read_manifest(str(uneven_shard_set)), read_manifest(str(few_shard_set))
    view = read_manifest(str(tmp_path / "v"))  # the folder finds view.json
    assert view.format_version == 1 and [m.uri for m in view.sources] == [a.uri, b.uri]
    expected = [r.uri for r in a.train if not r.uri.endswith("shard-000003.tar")]
    assert [r.uri for r in view.train] == expected + [r.uri for r in b.train]
    assert view.train[0].samples == a.train[0].samples - 4
    assert view.train[0].excluded == frozenset(drop)
    assert view.counts["segments"] == a.counts["segments"] + b.counts["segments"] - 5
    # Equal weights: the pooled statistics of the union, in float64.
    n = np.array([a.stats.count, b.stats.count], dtype=np.float64)
    mean = (n[0] * a.stats.mean + n[1] * b.stats.mean) / n.sum()
    second = (
        n[0] * (a.stats.std**2 + a.stats.mean**2) + n[1] * (b.stats.std**2 + b.stats.mean**2)
    ) / n.sum()
    np.testing.assert_allclose(view.stats.mean, mean, rtol=1e-12)
    np.testing.assert_allclose(view.stats.std, np.sqrt(second - mean**2), rtol=1e-9)


@pytest.mark.timeout(60)
def test_view_refuses_changed_sources_and_mixed_presets(uneven_shard_set, tmp_path):
    changed = write_shard_set(tmp_path / "changed", [3], frames=(20, 30), seed=5)
    write_view(tmp_path / "stale.json", [(changed, {})])
    manifest = json.loads((changed / "manifest.json").read_text())
    manifest["counts"]["inputs"] += 1
    (changed / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ShardFormatError, match="changed since the view was made"):
        read_manifest(str(tmp_path / "stale.json"))
    other = write_shard_set(tmp_path / "mel", [3], frames=(20, 30), seed=6, preset="logmel128")
    write_view(tmp_path / "mixed.json", [(uneven_shard_set, {}), (other, {})])
    with pytest.raises(ShardFormatError, match="uses preset 'logmel128'"):
        read_manifest(str(tmp_path / "mixed.json"))
    write_view(tmp_path / "bad.json", [(uneven_shard_set, {})], format_version=9)
    with pytest.raises(ShardFormatError, match="unsupported musicoder-view version 9"):
        read_manifest(str(tmp_path / "bad.json"))
