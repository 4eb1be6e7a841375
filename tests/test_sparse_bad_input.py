"""Bad sparse input against a live shard: negative, repeated and too many ids, rows of the wrong
shape or dtype, NaN rows, unknown tables, ids of another shard; each refused with its code over
HTTP (push and rows) and over the data port (push and pull, as workers send them), an id array
over the body cap refused as too_large on both, and the tables, parameters and version
unchanged."""

from __future__ import annotations

import io

import aiohttp
import numpy as np

from ps_server.checkpoint import arrays_digest
from pscluster.datalink import DataLink
from pscluster.idhash import shard_of_ids
from pscluster.messages import Pull, Reply
from pscluster.protocol import MSGPACK, decode_frame, encode_frame
from pscluster.sparse_wire import MAX_IDS, ids_key, rows_key, want_key
from tests.cluster import TOKEN, local_cluster

AUTH = {"Authorization": f"Bearer {TOKEN}", "Content-Type": MSGPACK}
JOB = {"shards": 2, "workers": 2, "model": "fm", "dataset": "clicks", "steps": 1000}
FACTORS = 8
# The shards' body cap: MAX_IDS + 1 ids (8 MiB) fit, and are refused as too many; twice as many
# do not, and are refused unread.
CAP_MB = 12


def digest(state) -> str:  # type: ignore[no-untyped-def]  # a ShardState
    arrays = {**state.params, **state.optimizer.state(), **state.tables.state_arrays()}
    return f"{state.version}:{arrays_digest(arrays)}"


def own_ids(n: int, shard: int = 0) -> np.ndarray:
    """``n`` ids that shard ``shard`` of 2 holds."""
    candidates = np.arange(40 * n, dtype=np.int64)
    return candidates[shard_of_ids(candidates, 2) == shard][:n]


def push(arrays: dict[str, np.ndarray], **header: object) -> bytes:
    base = {"kind": "push", "worker": "w0", "rank": 0, "base_version": 0, "shard": 0}
    return encode_frame({**base, "want_params": False, **header}, arrays)


def pull(arrays: dict[str, np.ndarray]) -> bytes:
    return encode_frame(Pull().header(), arrays)


def rows(ids: np.ndarray, dim: int = FACTORS, dtype: type = np.float32) -> dict[str, np.ndarray]:
    return {ids_key("factors"): ids, rows_key("factors"): np.full((len(ids), dim), 0.1, dtype)}


async def test_bad_sparse_inputs_are_refused_and_change_nothing() -> None:
    async with local_cluster(JOB, shard={"max_body_mb": CAP_MB}) as cluster:
        await cluster.wait_shards_ready()
        state = cluster.shard_states()[0]
        shard = cluster.shard_urls[0]
        good = own_ids(4)
        nan = rows(good)
        nan[rows_key("factors")][2, 1] = np.nan
        foreign = own_ids(2, shard=1)
        huge = np.arange(MAX_IDS + 1, dtype=np.int64)  # 8 MiB of ids: under the body cap
        cases = [
            ("negative id", rows(np.array([good[0], -3])), "bad_id"),
            ("repeated id", rows(np.array([good[0], good[1], good[0]])), "duplicate_id"),
            ("too many ids", {want_key("factors"): huge}, "too_many_ids"),
            ("ids as int32", rows(good.astype(np.int32)), "bad_dtype"),
            ("rows too narrow", rows(good, dim=FACTORS - 1), "bad_shape"),
            ("rows of float64", rows(good, dtype=np.float64), "bad_dtype"),
            ("NaN in a row", nan, "not_finite"),
            ("ids without rows", {ids_key("factors"): good}, "missing_parameter"),
            ("unknown table", {ids_key("nope"): good}, "unknown_parameter"),
            ("another shard's ids", rows(foreign), "wrong_shard"),
            ("negative wanted id", {want_key("linear"): np.array([-1])}, "bad_id"),
            ("repeated wanted id", {want_key("linear"): good[[0, 1, 1]]}, "duplicate_id"),
            ("ids over the body cap", {want_key("factors"): np.arange(2 * MAX_IDS)}, "too_large"),
        ]
        before = digest(state)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
            for name, arrays, code in cases:
                for path, body in (("push", push(arrays)), ("rows", encode_frame({}, arrays))):
                    data = io.BytesIO(body)  # aiohttp warns of large bytes bodies
                    async with http.post(f"{shard}/{path}", data=data, headers=AUTH) as resp:
                        assert resp.status in (400, 413), (name, path, resp.status)
                        assert decode_frame(await resp.read()).header["status"] == code, name
        # The data port: the same refusals, each on one connection (a refusal keeps it open).
        link = DataLink(cluster.data_urls[0], TOKEN, max_reply_bytes=1 << 20, connect_timeout_s=10)
        try:
            for name, arrays, code in cases:
                for kind, body in (("push", push(arrays)), ("pull", pull(arrays))):
                    reply = Reply.parse(decode_frame(await link.request(body, 30.0)))
                    assert reply.status.value == code, (name, kind, reply.status)
                    assert not reply.arrays and reply.version in (-1, 0), (name, kind)
        finally:
            link.close()
        assert digest(state) == before
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
            # A good pull of rows answers their initial values and creates nothing.
            body = encode_frame({}, {want_key("factors"): good})
            async with http.post(f"{shard}/rows", data=body, headers=AUTH) as resp:
                assert resp.status == 200
                got = decode_frame(await resp.read()).arrays[rows_key("factors")]
            assert got.shape == (4, FACTORS) and np.abs(got).max() > 0
            assert digest(state) == before and state.tables.tables["factors"].rows == 0
