"""Search and build internals tuned for speed and memory: FAISS settings, the int8-bounded exact
search of flat indexes, and the streaming writers used by the build."""

from __future__ import annotations

import json
from pathlib import Path

import faiss
import numpy as np
import pytest

from opencir.index import BuildConfig, GalleryIndex, add_images, build_index, remove_images
from opencir.index.exact import CodeInfo, ExactSearch, column_scale, quantize
from opencir.index.manifest import CODES_FILE, CODES_INFO_FILE
from opencir.index.stream import NpyWriter, iter_npy_rows, write_flat_faiss
from opencir.index.tuning import FaissSettings, available_cpus, configure_faiss
from tests.test_serve_support import FAST, FakeRetriever, solid_images


def _unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    rows = rng.standard_normal((n, d), dtype=np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def _clustered(rng: np.random.Generator, n: int, d: int, centres: int = 20) -> np.ndarray:
    means = _unit(rng, centres, d)
    rows = means[rng.integers(0, centres, n)] + 0.3 * _unit(rng, n, d)
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def _searcher(vectors: np.ndarray, ids: np.ndarray | None = None) -> ExactSearch:
    scale = column_scale(np.abs(vectors).max(axis=0))
    codes, error, norm = quantize(vectors, scale)
    info = CodeInfo(scale, float(error.max()), float(norm.max()))
    return ExactSearch(vectors, codes, info, np.arange(len(vectors)) if ids is None else ids)


def _numpy_top_k(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    scores = queries @ vectors.T
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1)
    return np.take_along_axis(part, order, axis=1)


@pytest.mark.parametrize("make", [_unit, _clustered])
@pytest.mark.parametrize(("queries", "k"), [(1, 10), (3, 50), (40, 10), (40, 50)])
def test_exact_search_ranks_like_numpy_brute_force(make, queries: int, k: int) -> None:
    rng = np.random.default_rng(queries * 100 + k)
    vectors, query = make(rng, 30_000, 64), _unit(rng, queries, 64)
    scores, ids = _searcher(vectors).search(query, k)
    np.testing.assert_array_equal(ids, _numpy_top_k(vectors, query, k))
    expected = np.take_along_axis(query @ vectors.T, ids, axis=1)
    np.testing.assert_allclose(scores, expected, atol=1e-6)


@pytest.mark.parametrize("queries", [1, 40])
def test_int8_scores_stay_within_the_bound_used_to_prune(queries: int) -> None:
    """The pruning is exact only if no row's int8 score is further off than the bound."""
    rng = np.random.default_rng(7)
    vectors, query = _clustered(rng, 5_000, 96), _unit(rng, queries, 96)
    search = _searcher(vectors)
    score, window, unit = search._scorer(query)
    true = query.astype(np.float64) @ vectors.T.astype(np.float64)
    error = np.abs(score(0, len(vectors)).float().numpy() - true * unit[:, None])
    assert (error <= window[:, None] / 2).all()
    assert (error.max(axis=1) > window / 200).all(), "the bound is not vacuous"


SCANS = {"int8": True, "float32": False}  # whether a batch scans in int8


@pytest.mark.parametrize("scan", SCANS)
@pytest.mark.parametrize("make", [_unit, _clustered])
@pytest.mark.parametrize("k", [10, 50])
def test_both_batch_scans_rank_like_numpy_brute_force(monkeypatch, scan: str, make, k: int):
    monkeypatch.setattr(ExactSearch, "_int8_pays", lambda *_: SCANS[scan])
    rng = np.random.default_rng(k)
    vectors, query = make(rng, 20_000, 64), _unit(rng, 30, 64)
    scores, ids = _searcher(vectors).search(query, k)
    np.testing.assert_array_equal(ids, _numpy_top_k(vectors, query, k))
    expected = np.take_along_axis(query @ vectors.T, ids, axis=1)
    np.testing.assert_allclose(scores, expected, atol=1e-6)


@pytest.mark.parametrize("scan", SCANS)
def test_both_batch_scans_rank_equal_scores_by_row(monkeypatch, scan: str) -> None:
    """Copies of a vector score the same; the earlier row comes first, as a stable sort."""
    monkeypatch.setattr(ExactSearch, "_int8_pays", lambda *_: SCANS[scan])
    rng = np.random.default_rng(11)
    distinct, query = _unit(rng, 400, 32), _unit(rng, 12, 32)
    copy_of = rng.permutation(np.repeat(np.arange(400), 5))
    true = (query.astype(np.float64) @ distinct.T.astype(np.float64))[:, copy_of]
    expected = np.argsort(-true, axis=1, kind="stable")[:, :30]
    _, ids = _searcher(distinct[copy_of]).search(query, 30)
    np.testing.assert_array_equal(ids, expected)


def test_a_batch_scans_in_float32_only_when_int8_would_leave_many_rows(monkeypatch) -> None:
    rng = np.random.default_rng(2)
    search, query = _searcher(_unit(rng, 60_000, 64)), _unit(rng, 30, 64)
    float_scans = []
    original = ExactSearch._float_scorer
    monkeypatch.setattr(
        ExactSearch, "_float_scorer", lambda self, q: float_scans.append(1) or original(self, q)
    )
    search.search(query, 10)  # ~0.1% of the rows left to rerank: int8
    assert float_scans == []
    search.search(query, 200)  # ~0.8%: float32
    assert float_scans == [1]
    _searcher(_unit(rng, 20_000, 64)).search(query, 10)  # small gallery: no probe, float32
    assert float_scans == [1, 1]


@pytest.mark.parametrize("make", [_unit, _clustered])
def test_rerank_share_estimate_is_close_to_the_rows_int8_leaves(monkeypatch, make) -> None:
    monkeypatch.setattr(ExactSearch, "_int8_pays", lambda *_: True)
    rng = np.random.default_rng(3)
    search, query = _searcher(make(rng, 60_000, 64)), _unit(rng, 30, 64)
    _, window, unit = search._scorer(query)
    for k in (10, 50, 200):
        left = np.mean([len(rows) for rows in search._candidates(query, k)]) / 60_000
        assert left / 1.5 <= search._rerank_share(query, window / unit, k) <= left * 1.5


def test_float32_scores_stay_within_the_window_used_to_prune() -> None:
    rng = np.random.default_rng(9)
    vectors, query = _clustered(rng, 5_000, 96), _unit(rng, 40, 96)
    score, window, _ = _searcher(vectors)._float_scorer(query)
    true = query.astype(np.float64) @ vectors.T.astype(np.float64)
    assert (np.abs(score(0, len(vectors)).numpy() - true) <= window[:, None] / 4).all()


def test_exact_search_pads_when_the_gallery_is_smaller_than_k() -> None:
    vectors = _unit(np.random.default_rng(0), 5, 16)
    scores, ids = _searcher(vectors, np.array([3, 8, 9, 12, 40])).search(vectors[:2], 8)
    assert (ids[:, 5:] == -1).all() and np.isneginf(scores[:, 5:]).all()
    assert ids[0, 0] == 3 and ids[1, 0] == 8


def _faiss_settings() -> tuple[int, int, int, int]:
    cvar = faiss.cvar
    return (
        cvar.distance_compute_blas_threshold,
        cvar.distance_compute_blas_query_bs,
        cvar.distance_compute_blas_database_bs,
        faiss.omp_get_max_threads(),
    )


@pytest.fixture
def host_faiss_settings():
    """FAISS settings a host process chose (none of ours); restored afterwards."""
    before = _faiss_settings()
    chosen = FaissSettings(blas_threshold=3, blas_query_bs=5, blas_database_bs=7, threads=1)
    configure_faiss(chosen)
    yield _faiss_settings()
    configure_faiss(FaissSettings(*before))


@pytest.mark.parametrize("factory", ["Flat", "HNSW8"])
def test_library_calls_leave_the_process_faiss_settings_alone(
    tmp_path: Path, host_faiss_settings, factory: str
) -> None:
    solid_images(tmp_path / "imgs", 30)
    config = BuildConfig(**{**FAST.__dict__, "factory": factory})
    build_index(FakeRetriever(), tmp_path / "imgs", tmp_path / "idx", config)
    remove_images(tmp_path / "idx", ids=[2])
    index = GalleryIndex.open(tmp_path / "idx")
    index.search(_unit(np.random.default_rng(0), 30, index.dim), 3)
    index.close()
    assert _faiss_settings() == host_faiss_settings


def _tuned() -> tuple[int, int, int, int]:
    wanted = FaissSettings()
    threads = available_cpus()
    return (wanted.blas_threshold, wanted.blas_query_bs, wanted.blas_database_bs, threads)


def test_the_index_command_tunes_faiss_for_its_process(tmp_path: Path, host_faiss_settings):
    from opencir.cli import main

    solid_images(tmp_path / "imgs", 12)
    build_index(FakeRetriever(), tmp_path / "imgs", tmp_path / "idx", FAST)
    assert _faiss_settings() == host_faiss_settings
    assert main(["index", "verify", "--index", str(tmp_path / "idx")]) == 0
    assert _faiss_settings() == _tuned()


def test_a_served_process_is_tuned_but_a_server_thread_is_not(
    monkeypatch, host_faiss_settings
) -> None:
    from opencir.serve import runner

    class Server:  # uvicorn's part: returns at once instead of serving
        started = True
        should_exit = False

        def run(self, sockets: list) -> None:
            opened.extend(sockets)

    opened: list = []
    monkeypatch.setattr(runner, "_server", lambda app, log_level: Server())
    runner.start_in_thread(app=None).stop()
    assert _faiss_settings() == host_faiss_settings
    runner.serve_socket(app=None, sock=runner.bind("127.0.0.1", 0))
    assert _faiss_settings() == _tuned()
    for sock in opened:
        sock.close()


def test_flat_index_is_searched_through_its_int8_codes(tmp_path: Path) -> None:
    solid_images(tmp_path / "imgs", 60)
    build_index(FakeRetriever(), tmp_path / "imgs", tmp_path / "idx", FAST)
    remove_images(tmp_path / "idx", ids=[0, 5, 17])
    index = GalleryIndex.open(tmp_path / "idx", verify=True)
    assert {CODES_FILE, CODES_INFO_FILE} <= set(index.manifest.files)
    assert index.exact is not None and len(index.exact.ids) == 57
    embeddings = np.asarray(index.embeddings())
    ids = np.array([item.id for item in index.page(0, 100)])
    codes = np.load(tmp_path / "idx" / CODES_FILE)
    info = CodeInfo.read(tmp_path / "idx" / CODES_INFO_FILE)
    np.testing.assert_array_equal(codes, quantize(embeddings, info.column_scale)[0])
    queries = _unit(np.random.default_rng(3), 9, embeddings.shape[1])
    hits = index.search(queries, 5)
    expected = ids[_numpy_top_k(embeddings, queries, 5)]
    np.testing.assert_array_equal([[h.item.id for h in q] for q in hits], expected)


def test_trained_index_keeps_faiss_search_and_has_no_codes(tmp_path: Path) -> None:
    solid_images(tmp_path / "imgs", 40)
    config = BuildConfig(**{**FAST.__dict__, "factory": "HNSW8"})
    build_index(FakeRetriever(), tmp_path / "imgs", tmp_path / "idx", config)
    add_images(tmp_path / "idx", tmp_path / "imgs", FakeRetriever(), config)
    index = GalleryIndex.open(tmp_path / "idx")
    assert index.exact is None and CODES_FILE not in index.manifest.files
    assert len(index.search(_unit(np.random.default_rng(0), 2, index.dim), 3)[0]) == 3


def test_streamed_flat_faiss_file_is_byte_identical_to_faiss_write_index(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    vectors, ids = _unit(rng, 37, 12), rng.permutation(1000)[:37].astype(np.int64)
    write_flat_faiss(tmp_path / "ours.faiss", 12, [vectors[:20], vectors[20:]], ids)
    reference = faiss.IndexIDMap2(faiss.index_factory(12, "Flat", faiss.METRIC_INNER_PRODUCT))
    reference.add_with_ids(vectors, ids)
    assert (tmp_path / "ours.faiss").read_bytes() == faiss.serialize_index(reference).tobytes()
    loaded = faiss.read_index(str(tmp_path / "ours.faiss"), faiss.IO_FLAG_MMAP)
    assert loaded.search(vectors[:1], 1)[1][0, 0] == ids[0]


def test_flat_faiss_writer_refuses_a_row_count_that_does_not_match_the_ids(
    tmp_path: Path,
) -> None:
    with pytest.raises(ValueError, match="got 3 vectors for 4 ids"):
        write_flat_faiss(tmp_path / "x.faiss", 2, [np.zeros((3, 2))], np.arange(4))


def test_npy_writer_and_reader_round_trip_in_chunks(tmp_path: Path) -> None:
    rows = np.arange(70, dtype=np.float32).reshape(35, 2)
    with NpyWriter(tmp_path / "a.npy", np.float32, (35, 2)) as writer:
        for start in range(0, 35, 8):
            writer.write(rows[start : start + 8])
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), rows)
    np.testing.assert_array_equal(
        np.concatenate(list(iter_npy_rows(tmp_path / "a.npy", 4, 6))), rows[4:]
    )
    writer = NpyWriter(tmp_path / "b.npy", np.float32, (2, 2))
    writer.write(rows[:1])
    with pytest.raises(ValueError, match="wrote 1 of 2 rows"):
        writer.close()


def test_code_info_round_trips_through_json(tmp_path: Path) -> None:
    info = CodeInfo(np.array([0.1, 0.25, 1e-8], np.float32), 0.0123, 590.5)
    (tmp_path / "c.json").write_text(json.dumps(info.to_json()))
    again = CodeInfo.read(tmp_path / "c.json")
    np.testing.assert_array_equal(again.column_scale, info.column_scale)
    assert (again.max_error, again.max_code_norm) == (info.max_error, info.max_code_norm)


def test_flat_index_without_codes_is_searched_by_faiss(tmp_path: Path) -> None:
    """Indexes written before the int8 codes existed still open and search exactly."""
    solid_images(tmp_path / "imgs", 30)
    build_index(FakeRetriever(), tmp_path / "imgs", tmp_path / "idx", FAST)
    manifest = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    for name in (CODES_FILE, CODES_INFO_FILE):
        (tmp_path / "idx" / name).unlink()
        del manifest["files"][name]
    (tmp_path / "idx" / "manifest.json").write_text(json.dumps(manifest))
    index = GalleryIndex.open(tmp_path / "idx", verify=True)
    assert index.exact is None
    embeddings = np.asarray(index.embeddings())
    queries = _unit(np.random.default_rng(4), 3, embeddings.shape[1]).astype(np.float64)
    expected = _numpy_top_k(embeddings, queries.astype(np.float32), 4)
    assert [[h.item.id for h in q] for q in index.search(queries, 4)] == expected.tolist()
