"""preprocess + records: exact counts, values read back, bad inputs, re-runs, kills, loader errors.

Every dataset here is built from `SeqSpec`s (tests/conftest.py), so the fate of
each CSV row is known in advance: kept, or dropped for one stated reason.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import SeqSpec, tree_digest, write_csv, write_kaggle_dataset
from fingerspell import machine
from fingerspell.data import convert as preprocessing, records
from fingerspell.data.convert import PreprocessConfig, PreprocessError, preprocess
from fingerspell.data.schema import LANDMARK_COLUMNS, N_SELECTED_COLUMNS, SELECTED_COLUMNS, column_index

REPO = Path(__file__).resolve().parent.parent
SELECTED_IDX = np.array([column_index(c) for c in SELECTED_COLUMNS])

# file 101: Kaggle layout; file 102: rows shuffled (sequences interleaved, frames out of order).
BASIC = {
    101: [
        SeqSpec(1, "abc", left_full=7),  # 2*3 < 7: kept
        SeqSpec(2, "abc", left_full=6, right_full=5),  # 6 < 6 fails: too few
        SeqSpec(3, "abc", left_full=2, right_full=7),  # kept by the right hand
        SeqSpec(4, "ab", left_full=4, partial=10),  # frames missing one value do not count: too few
        SeqSpec(5, "Hello", left_full=20),  # 'H' is outside the map
        SeqSpec(6, "ab", in_parquet=False),  # listed, but no rows in the file
        SeqSpec(7, "x", left_full=5, in_csv=False),  # in the file, not in the CSV: ignored
        SeqSpec(8, "nan", left_full=7, participant_id=3),  # a phrase pandas would read as NaN: kept
    ],
    102: [
        SeqSpec(11, "hi", left_full=5, participant_id=2),  # kept
        SeqSpec(12, "a b", right_full=6, participant_id=2),  # 6 < 6 fails: too few
        SeqSpec(13, "a", left_full=3, n_frames=7, participant_id=2),  # kept
    ],
}
BASIC_KEPT = [1, 3, 8, 11, 13]
BASIC_DROPPED = {"file_error": 0, "unknown_characters": 1, "not_in_parquet": 1, "too_few_hand_frames": 3}


@pytest.fixture
def basic_data(tmp_path):
    data = tmp_path / "data"
    written = write_kaggle_dataset(data, BASIC, raw={102: {"shuffle_rows": True}})
    return data, written


def run_cli(args, env, check_rc=None, **kwargs):
    proc = subprocess.run([sys.executable, "-m", "preprocess", "--no-progress", *map(str, args)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120, **kwargs)
    if check_rc is not None:
        assert proc.returncode == check_rc, proc.stderr
    return proc


def read_all(out: Path, split=None) -> dict[int, dict]:
    import tensorflow as tf  # noqa: F401
    return {int(r["sequence_id"]): {k: v.numpy() for k, v in r.items()}
            for r in records.load_dataset(out, split=split)}


def expected_landmarks(written, file_id, sequence_id) -> np.ndarray:
    return written[file_id][sequence_id][:, SELECTED_IDX]


# --- counts and values ----------------------------------------------------------------------

def test_exact_counts_and_values_read_back(basic_data, tmp_path):
    data, written = basic_data
    before = tree_digest(data)
    out = tmp_path / "out"
    manifest = preprocess(PreprocessConfig(data, out, workers=1, progress=False))

    assert manifest["csv_rows"] == 10
    assert manifest["kept"] == len(BASIC_KEPT)
    assert manifest["dropped"] == BASIC_DROPPED
    assert manifest["errors"] == []
    assert manifest["selected_columns"] == list(SELECTED_COLUMNS)
    assert manifest["settings"]["min_hand_frames_factor"] == 2.0
    per_file = {f["file_id"]: f for f in manifest["files"]}
    assert per_file[101]["kept"] == 3 and per_file[101]["csv_rows"] == 7 and per_file[101]["not_in_csv"] == 1
    assert per_file[102]["kept"] == 2 and per_file[102]["dropped"]["too_few_hand_frames"] == 1
    assert per_file[101]["shard"] == "train/101.tfrecord"
    warnings = " | ".join(per_file[101]["warnings"])
    assert "101.parquet: sequence 5" in warnings and "'H'" in warnings
    assert "101.parquet: sequence 6 is listed in the CSV but has no rows" in warnings
    assert records.read_manifest(out)["kept"] == manifest["kept"]

    got = read_all(out)
    assert sorted(got) == BASIC_KEPT
    specs = {s.sequence_id: (f, s) for f, specs in BASIC.items() for s in specs}
    for sid, record in got.items():
        file_id, spec = specs[sid]
        want = expected_landmarks(written, file_id, sid)
        assert record["landmarks"].dtype == np.float32 and record["landmarks"].shape == (spec.n_frames, 156)
        np.testing.assert_array_equal(np.isnan(record["landmarks"]), np.isnan(want))
        np.testing.assert_array_equal(record["landmarks"], want)  # NaN == NaN here
        assert record["phrase"].decode() == spec.phrase
        assert record["participant_id"] == spec.participant_id and record["file_id"] == file_id
    # Per-signer counts and the longest phrase, as training reads them instead of scanning the records.
    by_participant: dict[str, dict[str, int]] = {}
    for record in got.values():
        counts = by_participant.setdefault(str(record["participant_id"]), {"sequences": 0, "frames": 0})
        counts["sequences"] += 1
        counts["frames"] += len(record["landmarks"])
    assert manifest["participants"] == by_participant and len(by_participant) > 1
    assert manifest["frames_kept"] == sum(len(r["landmarks"]) for r in got.values())
    longest = manifest["longest_phrase"]
    assert longest["characters"] == max(len(r["phrase"]) for r in got.values())
    assert len(got[longest["sequence_id"]]["phrase"]) == longest["characters"]
    for file_id in per_file:
        kept_here = [r for r in got.values() if r["file_id"] == file_id]
        assert sum(c["sequences"] for c in per_file[file_id]["participants"].values()) == len(kept_here)
        assert per_file[file_id]["longest_phrase"]["characters"] == max(len(r["phrase"]) for r in kept_here)
    assert tree_digest(data) == before, "the input directory was modified"


def test_records_keep_csv_order_within_a_shard(basic_data, tmp_path):
    data, _ = basic_data
    out = tmp_path / "out"
    preprocess(PreprocessConfig(data, out, workers=1, progress=False))
    import tensorflow as tf
    ids = [int(r["sequence_id"]) for r in records.load_dataset([out / "train" / "101.tfrecord"])]
    assert ids == [1, 3, 8]
    assert tf.data.TFRecordDataset(str(out / "train" / "102.tfrecord")).reduce(0, lambda n, _: n + 1) == 2


def test_factor_is_configurable(basic_data, tmp_path):
    data, _ = basic_data
    manifest = preprocess(PreprocessConfig(data, tmp_path / "out", workers=1, progress=False,
                                           min_hand_frames_factor=1.0))
    # 1*3 < 6 keeps 2; 1*2 < 4 keeps 4; 1*3 < 6 keeps 12.
    assert manifest["kept"] == len(BASIC_KEPT) + 3
    assert manifest["dropped"]["too_few_hand_frames"] == 0


# --- the command line: pool, re-runs, overwrite ------------------------------------------------

@pytest.mark.slow  # CLI subprocesses with worker processes
def test_cli_parallel_rerun_skips_and_overwrite_redoes(basic_data, tmp_path, subprocess_env):
    data, _ = basic_data
    out = tmp_path / "out"
    run_cli(["--data-dir", data, "--out", out, "--workers", 2], subprocess_env, check_rc=0)
    first = records.read_manifest(out)
    assert first["kept"] == len(BASIC_KEPT) and first["dropped"] == BASIC_DROPPED
    assert first["settings"]["workers"] == 2  # an explicit --workers is used as given
    assert first["run"]["files_reused"] == 0
    shard = out / "train" / "101.tfrecord"
    stamp = shard.stat().st_mtime_ns, shard.stat().st_ino

    proc = run_cli(["--data-dir", data, "--out", out], subprocess_env, check_rc=0)
    second = records.read_manifest(out)
    assert second["run"]["files_reused"] == 2 and "2 reused" in proc.stderr
    assert (second["kept"], second["dropped"]) == (first["kept"], first["dropped"])
    assert [f["warnings"] for f in second["files"]] == [f["warnings"] for f in first["files"]]
    assert (shard.stat().st_mtime_ns, shard.stat().st_ino) == stamp

    run_cli(["--data-dir", data, "--out", out, "--overwrite"], subprocess_env, check_rc=0)
    third = records.read_manifest(out)
    assert third["run"]["files_reused"] == 0 and third["kept"] == first["kept"]
    assert (shard.stat().st_mtime_ns, shard.stat().st_ino) != stamp

    # Other settings make earlier shards stale: redone without --overwrite.
    run_cli(["--data-dir", data, "--out", out, "--min-hand-frames-factor", "1"], subprocess_env, check_rc=0)
    fourth = records.read_manifest(out)
    assert fourth["run"]["files_reused"] == 0 and fourth["kept"] == len(BASIC_KEPT) + 3
    assert len(read_all(out)) == len(BASIC_KEPT) + 3


def test_rerun_redoes_a_file_whose_csv_rows_changed(basic_data, tmp_path):
    data, _ = basic_data
    out = tmp_path / "out"
    preprocess(PreprocessConfig(data, out, workers=1, progress=False))
    rows = [{"path": "train_landmarks/102.parquet", "file_id": 102, "sequence_id": s.sequence_id,
             "participant_id": s.participant_id, "phrase": s.phrase} for s in BASIC[102]]
    for spec in BASIC[101]:
        if spec.in_csv:
            rows.append({"path": "train_landmarks/101.parquet", "file_id": 101, "sequence_id": spec.sequence_id,
                         "participant_id": spec.participant_id, "phrase": "z" if spec.sequence_id == 1 else spec.phrase})
    write_csv(data / "train.csv", rows)
    manifest = preprocess(PreprocessConfig(data, out, workers=1, progress=False))
    reused = {f["file_id"]: f["reused"] for f in manifest["files"]}
    assert reused == {101: False, 102: True}
    assert read_all(out)[1]["phrase"] == b"z"


# --- bad input files ------------------------------------------------------------------------

BAD_FILES = {
    202: ("parquet file not found", None),
    203: ("cannot read parquet file", None),  # garbage bytes
    204: (f"missing column(s) ['{SELECTED_COLUMNS[3]}']", {"columns": [c for c in LANDMARK_COLUMNS
                                                                      if c != SELECTED_COLUMNS[3]]}),
    205: (f"landmark column '{SELECTED_COLUMNS[0]}' is string, expected numbers", {"dtype": str}),
    207: ("cannot read parquet file", None),  # truncated
}


@pytest.mark.slow  # CLI subprocesses with worker processes
def test_bad_files_are_reported_and_the_rest_is_processed(tmp_path, subprocess_env):
    data = tmp_path / "data"
    files = {201: [SeqSpec(1, "ab", left_full=9), SeqSpec(2, "ab", left_full=1)]}
    for k, file_id in enumerate(BAD_FILES):
        files[file_id] = [SeqSpec(100 * file_id + i, "ab", left_full=9) for i in range(k % 3 + 1)]
    write_kaggle_dataset(data, files, raw={f: kw for f, (_, kw) in BAD_FILES.items() if kw})
    landmarks = data / "train_landmarks"
    (landmarks / "202.parquet").unlink()
    (landmarks / "203.parquet").write_bytes(b"this is not a parquet file" * 100)
    size = (landmarks / "207.parquet").stat().st_size
    (landmarks / "207.parquet").write_bytes((landmarks / "207.parquet").read_bytes()[: size // 2])
    before = tree_digest(data)

    out = tmp_path / "out"
    proc = run_cli(["--data-dir", data, "--out", out, "--workers", 2], subprocess_env, check_rc=1)
    manifest = records.read_manifest(out)
    errors = {Path(e["file"]).name: e["message"] for e in manifest["errors"]}
    assert sorted(errors) == sorted(f"{f}.parquet" for f in BAD_FILES)
    for file_id, (problem, _) in BAD_FILES.items():
        message = errors[f"{file_id}.parquet"]
        assert f"{file_id}.parquet" in message and problem in message, message
        assert message in proc.stderr
    assert "parquet file not found" in proc.stderr
    bad_rows = sum(len(files[f]) for f in BAD_FILES)
    assert manifest["kept"] == 1
    assert manifest["dropped"] == {"file_error": bad_rows, "unknown_characters": 0, "not_in_parquet": 0,
                                   "too_few_hand_frames": 1}
    assert manifest["kept"] + sum(manifest["dropped"].values()) == manifest["csv_rows"] == bad_rows + 2
    assert records.shard_paths(out) == [out / "train" / "201.tfrecord"]
    assert tree_digest(data) == before, "the input directory was modified"


def test_a_file_that_turns_bad_loses_its_old_shard(basic_data, tmp_path):
    data, _ = basic_data
    out = tmp_path / "out"
    preprocess(PreprocessConfig(data, out, workers=1, progress=False))
    (data / "train_landmarks" / "102.parquet").write_bytes(b"garbage")
    manifest = preprocess(PreprocessConfig(data, out, workers=1, progress=False))
    assert [Path(e["file"]).name for e in manifest["errors"]] == ["102.parquet"]
    assert records.shard_paths(out) == [out / "train" / "101.tfrecord"]
    assert manifest["dropped"]["file_error"] == 3


# --- other column types and orders ------------------------------------------------------------

CAST_FILES = {
    301: [SeqSpec(1, "ab", left_full=9), SeqSpec(2, "abc", right_full=8), SeqSpec(3, "abcd", left_full=3)],
    302: [SeqSpec(4, "ab", right_full=9), SeqSpec(5, "abc", left_full=4, partial=8)],
}


def _write_table(path: Path, sequences: dict[int, np.ndarray], columns: list[str], to_arrow) -> None:
    """A landmarks file as pandas users write one: the index column last, `to_arrow` per column."""
    values = np.concatenate(list(sequences.values()))
    arrays = {"frame": np.concatenate([np.arange(len(f), dtype=np.int16) for f in sequences.values()])}
    arrays.update({c: to_arrow(values[:, column_index(c)]) for c in columns})
    arrays["sequence_id"] = np.concatenate([np.full(len(f), sid, np.int64) for sid, f in sequences.items()])
    pq.write_table(pa.table(arrays), path)


def test_float64_and_integer_columns_in_any_order_are_cast_with_one_warning_per_file(tmp_path):
    data, out = tmp_path / "data", tmp_path / "out"
    written = write_kaggle_dataset(data, CAST_FILES)
    landmarks = data / "train_landmarks"
    # 301: float64 (pandas' default) in a shuffled column order, NaN stored as null as pandas does.
    doubles = {sid: f.astype(np.float64) / 3 for sid, f in written[301].items()}  # not float32-exact
    shuffled = [str(c) for c in np.random.default_rng(1).permutation(LANDMARK_COLUMNS)]
    _write_table(landmarks / "301.parquet", doubles, shuffled, lambda v: pa.array(v, from_pandas=True))
    # 302: int64 with nulls; values above 2**24, so the float32 cast has to round.
    ints = {sid: np.round(f.astype(np.float64) * 1e8) for sid, f in written[302].items()}
    _write_table(landmarks / "302.parquet", ints, list(LANDMARK_COLUMNS),
                 lambda v: pa.array(np.nan_to_num(v).astype(np.int64), mask=np.isnan(v)))

    manifest = preprocess(PreprocessConfig(data, out, workers=1, progress=False))
    assert manifest["errors"] == [] and manifest["kept"] == 3
    per_file = {f["file_id"]: f for f in manifest["files"]}
    for file_id, stored in ((301, "double"), (302, "int64")):
        assert per_file[file_id]["n_warnings"] == 1, per_file[file_id]["warnings"]
        (message,) = per_file[file_id]["warnings"]
        assert f"{file_id}.parquet: 156 landmark column(s) stored as {stored} instead of float32" in message
    printed = io.StringIO()
    preprocessing.report(manifest, out, stream=printed)
    assert printed.getvalue().count("instead of float32") == 2

    got = read_all(out)
    assert sorted(got) == [1, 2, 4]  # 3: 2*4 < 3 fails; 5: partial frames do not count, 2*3 < 4 fails
    for sid, source in [(1, doubles[1]), (2, doubles[2]), (4, ints[4])]:
        want = source[:, SELECTED_IDX].astype(np.float32)  # numpy's cast: round to nearest, NaN kept
        values = got[sid]["landmarks"]
        nan = np.isnan(want)
        np.testing.assert_array_equal(np.isnan(values), nan)
        assert nan.any() and (~nan).any()
        np.testing.assert_array_equal(values.view(np.uint32)[~nan], want.view(np.uint32)[~nan])


def test_a_float32_file_in_another_column_order_gives_the_same_records_without_warnings(basic_data, tmp_path):
    data, written = basic_data
    _write_table(data / "train_landmarks" / "101.parquet", written[101], list(LANDMARK_COLUMNS)[::-1],
                 lambda v: pa.array(v, pa.float32()))
    manifest = preprocess(PreprocessConfig(data, tmp_path / "out", workers=1, progress=False))
    assert manifest["kept"] == len(BASIC_KEPT) and manifest["dropped"] == BASIC_DROPPED
    assert [f["n_warnings"] for f in manifest["files"]] == [2, 0]  # 101's phrase 'Hello' and sequence 6 only
    got = read_all(tmp_path / "out")
    for sid in (1, 3, 8):
        np.testing.assert_array_equal(got[sid]["landmarks"], expected_landmarks(written, 101, sid))


# --- workers and memory -----------------------------------------------------------------------

def test_worker_count_is_bounded_by_memory_cores_and_files(tmp_path, monkeypatch, caplog):
    row_bytes = 8 + 2 + 156 * 4  # sequence_id int64, frame int16, 156 float32
    need = preprocessing.worker_memory_need(num_rows=160_000, bytes_per_row=row_bytes)
    assert need == 160_000 * row_bytes * 3
    choose = preprocessing.choose_workers
    assert choose(cores=16, available_bytes=2 * need + 1, largest_need=need, n_files=68) == 2  # memory
    assert choose(cores=16, available_bytes=100 * need, largest_need=need, n_files=68) == 16  # cores
    assert choose(cores=16, available_bytes=100 * need, largest_need=need, n_files=3) == 3  # files
    assert choose(cores=16, available_bytes=need // 2, largest_need=need, n_files=68) == 1  # at least one
    assert choose(cores=16, available_bytes=None, largest_need=need, n_files=68) == 16  # memory unknown

    # A file's need comes from its footer: rows x bytes of the columns a worker reads x 3.
    specs = {1: [SeqSpec(1, "ab"), SeqSpec(2, "ab", n_frames=13)]}
    written = write_kaggle_dataset(tmp_path / "d64", specs, raw={1: {"dtype": np.float64}})
    write_kaggle_dataset(tmp_path / "d32", specs)
    rows = sum(len(f) for f in written[1].values())
    f64, f32 = (str(tmp_path / d / "train_landmarks" / "1.parquet") for d in ("d64", "d32"))
    need64 = rows * (8 + 2 + 156 * 8) * 3
    assert preprocessing.file_memory_need(f64) == need64
    assert preprocessing.file_memory_need(f32) == rows * row_bytes * 3
    assert preprocessing.file_memory_need(str(tmp_path / "missing.parquet")) == 0

    monkeypatch.setattr(machine, "cpu_cores", lambda: 8)
    monkeypatch.setattr(machine, "available_memory", lambda: 2 * need64 + 1)
    with caplog.at_level(logging.WARNING, logger=preprocessing.__name__):
        assert preprocessing.default_workers([f32, f64, f32]) == 2
    assert "using 2 worker(s) instead of 3" in caplog.text
    monkeypatch.setattr(machine, "available_memory", lambda: None)
    assert preprocessing.default_workers([f32] * 5) == 5

# --- bad CSVs -------------------------------------------------------------------------------

def test_csv_problems_stop_the_run_with_a_clear_message(basic_data, tmp_path, subprocess_env):
    data, _ = basic_data
    csv_path = data / "train.csv"
    good = csv_path.read_text()

    def fails(text: str | None, *expected: str, split="train") -> None:
        if text is None:
            csv_path.unlink()
        else:
            csv_path.write_text(text)
        with pytest.raises(PreprocessError) as info:
            preprocess(PreprocessConfig(data, tmp_path / "out", split=split, workers=1, progress=False))
        for part in expected:
            assert part in str(info.value), str(info.value)
        csv_path.write_text(good)

    lines = good.splitlines()
    fails(None, "train.csv: metadata CSV not found")
    fails(good.replace(",phrase", ",text", 1), "train.csv: missing column(s) ['phrase']")
    fails("\n".join([lines[0], lines[1].replace(",1,", ",one,", 1), *lines[2:]]),
          "column 'sequence_id' must hold integers", "line(s) [2]")
    fails("\n".join([*lines, lines[1]]), "sequence_id(s) listed more than once: [1]")
    fails("\n".join([lines[0], "train_landmarks/101.parquet,101", *lines[2:]]), "train.csv: cannot read CSV")
    fails("", "train.csv: cannot read CSV")
    fails(good, "supplemental_metadata.csv: metadata CSV not found", split="all")

    csv_path.unlink()
    proc = run_cli(["--data-dir", data, "--out", tmp_path / "out"], subprocess_env, check_rc=2)
    assert "train.csv: metadata CSV not found" in proc.stderr
    proc = run_cli(["--data-dir", tmp_path / "nowhere", "--out", tmp_path / "out"], subprocess_env, check_rc=2)
    assert "nowhere is not a directory" in proc.stderr


def test_split_all_writes_both_splits(tmp_path):
    data = tmp_path / "data"
    write_kaggle_dataset(data, {1: [SeqSpec(10, "ab", left_full=9)]}, split="train")
    write_kaggle_dataset(data, {2: [SeqSpec(20, "ab", left_full=9), SeqSpec(21, "ab")]}, split="supplemental")
    out = tmp_path / "out"
    manifest = preprocess(PreprocessConfig(data, out, split="all", workers=1, progress=False))
    assert manifest["splits"]["train"]["kept"] == 1
    assert manifest["splits"]["supplemental"] == {"csv_rows": 2, "kept": 1, "files": 1, "dropped": {
        "file_error": 0, "unknown_characters": 0, "not_in_parquet": 0, "too_few_hand_frames": 1}}
    assert records.shard_paths(out, "supplemental") == [out / "supplemental" / "2.tfrecord"]
    assert records.shard_paths(out) == [out / "supplemental" / "2.tfrecord", out / "train" / "1.tfrecord"]
    assert sorted(read_all(out)) == [10, 20]
    assert sorted(read_all(out, split="train")) == [10]
    # A later run of one split into the same folder: training reads what its manifest lists, not stale shards.
    preprocess(PreprocessConfig(data, out, split="train", workers=1, progress=False))
    assert (out / "supplemental" / "2.tfrecord").exists()
    assert records.shard_paths(out) == [out / "train" / "1.tfrecord"]


# --- interruption ---------------------------------------------------------------------------

def _wait_until_unlocked(lock_path: Path, timeout: float = 30.0) -> None:
    """The run's lock is released once every process holding it (the CLI and its workers) is gone."""
    import fcntl
    deadline = time.monotonic() + timeout
    with open(lock_path) as lock:
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.flock(lock, fcntl.LOCK_UN)
                return
            except BlockingIOError:
                assert time.monotonic() < deadline, "the killed run's processes did not exit"
                time.sleep(0.02)


@pytest.mark.slow  # CLI subprocesses with worker processes
def test_a_killed_run_leaves_no_partial_shard_and_the_next_run_finishes(tmp_path, subprocess_env):
    data = tmp_path / "data"
    files = {f: [SeqSpec(100 * f + i, "ab", left_full=9) for i in range(12)] for f in (1, 2, 3)}
    write_kaggle_dataset(data, files)
    out = tmp_path / "out"
    env = dict(subprocess_env, FINGERSPELL_TEST_RECORD_DELAY="0.1")  # ~1.2 s per file
    proc = subprocess.Popen([sys.executable, "-m", "preprocess", "--no-progress", "--data-dir", str(data),
                             "--out", str(out), "--workers", "2"], cwd=REPO, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not list(out.rglob(".tmp-*.tfrecord.*")):
            assert proc.poll() is None and time.monotonic() < deadline, "no worker started writing"
            time.sleep(0.01)
        time.sleep(0.3)  # a few records into the shard
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the CLI and its workers, mid-shard
        proc.wait()

    _wait_until_unlocked(out / preprocessing.LOCK_NAME)  # killed workers may take a moment to exit
    assert list((out / "train").glob(".tmp-*.tfrecord.*")), "the kill should have caught a shard being written"
    assert not (out / "manifest.json").exists()
    with pytest.raises(FileNotFoundError, match="did not finish"):  # training refuses the killed run's folder
        records.shard_paths(out)
    for shard in (out / "train").glob("*.tfrecord"):  # finished before the kill: complete, with its JSON
        info = json.loads(shard.with_suffix(".json").read_text())
        assert sum(1 for _ in records.load_dataset([shard])) == info["result"]["kept"] == 12

    manifest = preprocess(PreprocessConfig(data, out, workers=2, progress=False))
    assert manifest["run"]["stale_temporaries_removed"] >= 1
    assert not list(out.rglob(".tmp-*"))
    assert manifest["kept"] == 36 and manifest["errors"] == []
    assert sorted(read_all(out)) == sorted(s.sequence_id for specs in files.values() for s in specs)


def test_a_run_that_replaces_shards_removes_the_old_manifest_before_any_work(basic_data, tmp_path, monkeypatch):
    data, _ = basic_data
    out = tmp_path / "out"
    preprocess(PreprocessConfig(data, out, workers=1, progress=False))
    seen = []

    def killed(tasks, workers, progress):  # the run dies once started, before it writes a manifest
        seen.append(((out / records.MANIFEST_NAME).exists(), len(tasks)))
        raise KeyboardInterrupt

    monkeypatch.setattr(preprocessing, "run_tasks", killed)
    with pytest.raises(KeyboardInterrupt):  # nothing to redo: the manifest stays valid
        preprocess(PreprocessConfig(data, out, workers=1, progress=False))
    with pytest.raises(KeyboardInterrupt):
        preprocess(PreprocessConfig(data, out, workers=1, progress=False, overwrite=True))
    assert seen == [(True, 0), (False, 2)]
    assert not (out / records.MANIFEST_NAME).exists()
    monkeypatch.undo()  # the next run rebuilds the manifest from the finished files
    manifest = preprocess(PreprocessConfig(data, out, workers=1, progress=False))
    assert manifest["run"]["files_reused"] == 2 and manifest["kept"] == len(BASIC_KEPT)

def test_a_second_concurrent_run_is_refused(basic_data, tmp_path):
    data, _ = basic_data
    out = tmp_path / "out"
    out.mkdir()
    import fcntl
    with open(out / preprocessing.LOCK_NAME, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        with pytest.raises(PreprocessError, match="another preprocess run"):
            preprocess(PreprocessConfig(data, out, workers=1, progress=False))


# --- records and the loader -------------------------------------------------------------------

def _example_bytes(n_columns: int | None, n_frames: int = 3) -> bytes:
    import tensorflow as tf
    values = np.zeros((n_frames, n_columns or 126), np.float32)
    feature = {"phrase": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"ab"]))}
    if n_columns is None:  # the seed notebook's format: one FloatList per column
        feature.update({f"c{i}": tf.train.Feature(float_list=tf.train.FloatList(value=values[:, i]))
                        for i in range(values.shape[1])})
    else:
        feature.update({
            "landmarks": tf.train.Feature(bytes_list=tf.train.BytesList(value=[values.tobytes()])),
            "n_frames": tf.train.Feature(int64_list=tf.train.Int64List(value=[n_frames])),
            "n_columns": tf.train.Feature(int64_list=tf.train.Int64List(value=[n_columns])),
            **{k: tf.train.Feature(int64_list=tf.train.Int64List(value=[1]))
               for k in ("sequence_id", "participant_id", "file_id")},
        })
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def _write_shard(path: Path, payloads: list[bytes]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with records.ShardWriter(path) as writer:
        for p in payloads:
            writer.write(p)


def test_loader_rejects_another_layout_early_and_in_parse(tmp_path):
    import tensorflow as tf
    good = records.serialize_sequence(np.ones((2, N_SELECTED_COLUMNS), np.float32), "ab", 1, 2, 3)
    _write_shard(tmp_path / "a" / "train" / "1.tfrecord", [good])
    _write_shard(tmp_path / "a" / "train" / "2.tfrecord", [_example_bytes(120)])
    with pytest.raises(records.RecordFormatError, match=r"2\.tfrecord: records have 120 columns per frame; "
                                                        r"this toolkit expects the columns of a landmark set \(156 "
                                                        r"for hands_arms, 390 for hands_arms_face, 1629 for all\)"):
        records.load_dataset(tmp_path / "a")
    # shards of two landmark sets in one directory
    face = records.serialize_sequence(np.ones((2, 390), np.float32), "ab", 4, 2, 3)
    _write_shard(tmp_path / "mixed" / "train" / "1.tfrecord", [good])
    _write_shard(tmp_path / "mixed" / "train" / "2.tfrecord", [face])
    with pytest.raises(records.RecordFormatError, match=r"2\.tfrecord: records hold landmarks='hands_arms_face', "
                                                        r"but .*1\.tfrecord holds 'hands_arms'"):
        records.load_dataset(tmp_path / "mixed")
    _write_shard(tmp_path / "b" / "1.tfrecord", [_example_bytes(None)])
    with pytest.raises(records.RecordFormatError, match="no n_columns feature"):
        records.load_dataset(tmp_path / "b")
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "1.tfrecord").write_bytes(b"not a tfrecord at all")
    with pytest.raises(records.RecordFormatError, match="not a TFRecord file"):
        records.load_dataset(tmp_path / "c")
    with pytest.raises(tf.errors.InvalidArgumentError, match="n_columns"):
        records.parse_record(_example_bytes(120))
    assert records.parse_record(good)["landmarks"].shape == (2, N_SELECTED_COLUMNS)


def test_loader_errors_name_the_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"{tmp_path / 'missing'} does not exist"):
        records.load_dataset(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=f"no .tfrecord shards for any split in {tmp_path / 'empty'}"):
        records.shard_paths(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="no manifest"):
        records.read_manifest(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="empty"):
        records.load_dataset([])


def test_loader_yields_the_documented_dict(tmp_path):
    import tensorflow as tf
    x = np.arange(4 * N_SELECTED_COLUMNS, dtype=np.float32).reshape(4, -1)
    x[1, :63] = np.nan
    _write_shard(tmp_path / "train" / "9.tfrecord", [records.serialize_sequence(x, "a-b", 5, 6, 9),
                                                     records.serialize_sequence(x[:1], "", -1, 0, 9)])
    ds = records.load_dataset(tmp_path, split="train")
    assert set(ds.element_spec) == set(records.OUTPUT_KEYS)
    assert ds.element_spec["landmarks"] == tf.TensorSpec([None, N_SELECTED_COLUMNS], tf.float32)
    first, second = list(ds)
    np.testing.assert_array_equal(first["landmarks"].numpy(), x)
    assert (first["phrase"].numpy(), int(first["sequence_id"]), int(first["participant_id"]),
            int(first["file_id"])) == (b"a-b", 5, 6, 9)
    assert second["landmarks"].shape == (1, N_SELECTED_COLUMNS) and int(second["sequence_id"]) == -1


def test_serialized_records_equal_tensorflows_own_encoding():
    import tensorflow as tf
    x = np.random.default_rng(0).random((5, N_SELECTED_COLUMNS), dtype=np.float32)
    ours = tf.train.Example.FromString(records.serialize_sequence(x, "héllo", -3, 2**40, 7))
    feature = ours.features.feature
    assert feature["landmarks"].bytes_list.value == [x.astype("<f4").tobytes()]
    assert [feature[k].int64_list.value[0] for k in ("n_frames", "n_columns", "sequence_id", "participant_id",
                                                     "file_id")] == [5, 156, -3, 2**40, 7]
    assert feature["phrase"].bytes_list.value == ["héllo".encode()]
    with pytest.raises(ValueError, match=r"\[T, C\] with C the columns of a landmark set \(156 for hands_arms"):
        records.serialize_sequence(np.zeros((3, 120)), "a", 1, 1, 1)


def test_crc32c_check_value_and_tensorflow_reads_our_framing(tmp_path):
    import tensorflow as tf
    assert records.crc32c(b"123456789") == 0xE3069283  # the standard CRC-32C check value
    x = np.ones((30, N_SELECTED_COLUMNS), np.float32)
    _write_shard(tmp_path / "s.tfrecord", [records.serialize_sequence(x, "ab", i, 1, 1) for i in range(3)])
    # TFRecordDataset verifies both masked CRCs of every record.
    assert [int(records.parse_record(r)["sequence_id"]) for r in tf.data.TFRecordDataset(str(tmp_path / "s.tfrecord"))] \
        == [0, 1, 2]


def test_workers_never_import_tensorflow_or_pandas(basic_data, tmp_path):
    data, _ = basic_data
    code = (
        "import sys; from pathlib import Path; from fingerspell.data import convert as p\n"
        f"m = p.preprocess(p.PreprocessConfig(Path({str(data)!r}), Path({str(tmp_path / 'out')!r}), "
        "workers=1, progress=False))\n"
        "assert m['kept'] == 5, m\n"
        "print(sorted(k for k in ('tensorflow', 'pandas') if k in sys.modules))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


# --- a larger dataset from the synthetic generator ---------------------------------------------

@pytest.mark.slow  # CLI subprocesses with worker processes
def test_synthetic_dataset_end_to_end(tmp_path, subprocess_env):
    synth = pytest.importorskip("fingerspell.synth.generator")
    from fingerspell.data.parquet import read_sequences
    from fingerspell.data.schema import SELECTED_LEFT_HAND_COLUMNS, SELECTED_RIGHT_HAND_COLUMNS

    data, out = tmp_path / "data", tmp_path / "out"
    summary = synth.generate_dataset(data, files=2, sequences_per_file=17, participants=4, seed=3,
                                     supplemental_files=1)
    run_cli(["--data-dir", data, "--out", out, "--split", "all", "--workers", 2], subprocess_env, check_rc=0)
    manifest = records.read_manifest(out)
    n = summary["n_sequences"]
    assert manifest["csv_rows"] == n == 51 and len(summary["short_hand_sequences"]) == 3

    # An independent oracle: the seed's rule straight from the parquet files.
    expected = {}
    for split_csv in ("train.csv", "supplemental_metadata.csv"):
        with open(data / split_csv, newline="") as f:
            rows = [(r["path"], r["sequence_id"], r["phrase"]) for r in csv.DictReader(f)]
        for path, sid, phrase in rows:
            frames = read_sequences(data / path, columns=SELECTED_COLUMNS, sequence_ids=[int(sid)])[int(sid)]
            full = max(int((~np.isnan(frames[:, cols]).any(axis=1)).sum())
                       for cols in (SELECTED_LEFT_HAND_COLUMNS, SELECTED_RIGHT_HAND_COLUMNS))
            if 2 * len(phrase) < full:
                expected[int(sid)] = frames
    got = read_all(out)
    assert sorted(got) == sorted(expected)
    assert manifest["kept"] == len(expected)
    assert manifest["dropped"]["too_few_hand_frames"] == n - len(expected)
    assert not set(summary["short_hand_sequences"]) & set(got)
    assert 0 < len(expected) < n, "the dataset should exercise both outcomes"
    for sid, frames in expected.items():
        np.testing.assert_array_equal(got[sid]["landmarks"], frames)


def test_training_refuses_a_folder_whose_preprocess_run_did_not_finish(basic_data, tmp_path):
    data, _ = basic_data
    out = tmp_path / "out"
    preprocess(PreprocessConfig(data, out, workers=1, progress=False))
    assert records.shard_paths(out)  # finished: the manifest lists the shards
    (out / records.MANIFEST_NAME).unlink()  # as a killed run that was replacing shards leaves it
    with pytest.raises(FileNotFoundError, match="did not finish.*re-run it"):
        records.shard_paths(out)
