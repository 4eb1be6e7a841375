"""Shards' initial values come from the coordinator (GET /initial/<i>), drawn from the seed:
checked against the shard map, refused when they disagree, equal to the model's own."""

from __future__ import annotations

import aiohttp
import numpy as np
import pytest

from pscluster.initial import initial_frame, parse_initial
from pscluster.models import build_model
from pscluster.protocol import ErrorCode, ProtocolError, encode_frame
from pscluster.sharding import Part, compute_shard_map
from tests.cluster import TOKEN, local_cluster


def test_a_shards_parts_cross_as_one_frame_and_come_back_owned() -> None:
    model = build_model("mlp", 64, 10, (32,))
    full = model.init_parameters(2)
    shard_map = compute_shard_map(model.parameter_shapes(), 3)
    assert any(part.split for parts in shard_map for part in parts)  # w1 is split in rows
    for index, parts in enumerate(shard_map):
        params = parse_initial(initial_frame(full, parts, index=index, seed=2), parts, index)
        assert sorted(params) == sorted(part.key for part in parts)
        for part in parts:
            got = params[part.key]
            np.testing.assert_array_equal(got, full[part.param][part.start : part.stop])
            assert got.flags.writeable and got.flags.owndata  # the shard updates it in place


def test_initial_values_that_disagree_with_the_shard_map_are_refused() -> None:
    parts = [Part("w", 0, 2, split=True), Part("b", 0, 3)]
    good = {"w[0:2]": np.ones((2, 3), np.float32), "b": np.zeros(3, np.float32)}
    cases = [
        (ErrorCode.WRONG_SHARD, {"shard": 1}, good),
        (ErrorCode.BAD_SHAPE, {"shard": 0}, {"w[0:2]": good["w[0:2]"]}),  # a part missing
        (ErrorCode.BAD_SHAPE, {"shard": 0}, {**good, "w[0:2]": np.ones((3, 3), np.float32)}),
        (ErrorCode.BAD_DTYPE, {"shard": 0}, {**good, "b": np.zeros(3, np.float16)}),
        (ErrorCode.NOT_FINITE, {"shard": 0}, {**good, "b": np.array([0, np.nan, 0], np.float32)}),
    ]
    for code, header, arrays in cases:
        with pytest.raises(ProtocolError) as refused:
            parse_initial(encode_frame(header, arrays), parts, 0)
        assert refused.value.code is code
    assert set(parse_initial(encode_frame({"shard": 0}, good), parts, 0)) == {"w[0:2]", "b"}


async def test_shards_start_from_the_coordinators_values() -> None:
    job = {"shards": 2, "workers": 1, "model": "mlp", "hidden": "16", "seed": 9}
    async with local_cluster(job) as cluster:
        await cluster.wait_shards_ready()
        expected = build_model("mlp", 64, 10, (16,)).init_parameters(9)
        for state, parts in zip(cluster.shard_states(), cluster.coordinator.shard_map, strict=True):
            for part in parts:
                np.testing.assert_array_equal(
                    state.params[part.key], expected[part.param][part.start : part.stop]
                )
        url = cluster.coordinator_url
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{url}/initial/0") as resp:
                assert resp.status == 401  # the cluster token guards it like every call
            auth = {"Authorization": f"Bearer {TOKEN}"}
            async with http.get(f"{url}/initial/2", headers=auth) as resp:
                assert resp.status == 400 and (await resp.json())["error"] == "wrong_shard"
