"""The synthetic dataset must look like Kaggle's to every stage and be learnable."""
from __future__ import annotations

import csv
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from fingerspell import cli
from fingerspell.data import phrases, schema, vocab
from fingerspell.synth import generator as synth

SMALL = dict(files=2, sequences_per_file=12, participants=8, seed=7, supplemental_files=1)
HAND_PARTS = [name for name, _ in schema.PARTS if name.endswith("hand")]  # left, right
FRAME = schema.PARQUET_COLUMNS[0]


def _columns(part: str) -> list[str]:
    """The 63 columns of one part's x, y, z, in file order."""
    n = dict(schema.PARTS)[part]
    start = synth._PART_OFFSETS[part]
    return [schema.LANDMARK_COLUMNS[c * synth.N_POINTS + start + i]
            for c in range(3) for i in range(n)]


def _xyz(df: pd.DataFrame, part: str) -> np.ndarray:
    """[rows, n, 3] of one part from a landmarks frame."""
    n = dict(schema.PARTS)[part]
    return df[_columns(part)].to_numpy().reshape(len(df), 3, n).transpose(0, 2, 1)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> dict:
    return synth.generate_dataset(tmp_path_factory.mktemp("synth") / "data", **SMALL)


@pytest.fixture(scope="module")
def meta(dataset) -> pd.DataFrame:
    train = pd.read_csv(dataset["train_csv"])
    supp = pd.read_csv(dataset["supplemental_csv"])
    return pd.concat([train, supp], ignore_index=True)


@pytest.fixture(scope="module")
def frames(dataset) -> pd.DataFrame:
    """Every landmark row of the dataset, indexed by sequence_id."""
    files = dataset["train_files"] + dataset["supplemental_files"]
    return pd.concat([pd.read_parquet(f) for f in files])


def test_parquet_schema_matches_kaggle(dataset):
    path = dataset["train_files"][0]
    arrow = pq.read_schema(path)
    assert arrow.names == [schema.INDEX_COLUMN, *schema.PARQUET_COLUMNS]
    assert str(arrow.field(FRAME).type) == "int16"
    assert str(arrow.field(schema.INDEX_COLUMN).type) == "int64"
    assert {str(arrow.field(c).type) for c in schema.LANDMARK_COLUMNS} == {"float"}
    assert arrow.pandas_metadata["index_columns"] == [schema.INDEX_COLUMN]

    df = pd.read_parquet(path)
    assert df.index.name == schema.INDEX_COLUMN and df.index.dtype == np.int64
    assert list(df.columns) == list(schema.PARQUET_COLUMNS)
    assert df[FRAME].dtype == np.int16
    assert (df[list(schema.LANDMARK_COLUMNS)].dtypes == np.float32).all()

    picked = [schema.INDEX_COLUMN, *schema.SELECTED_COLUMNS[:3]]
    table = pq.read_table(path, columns=picked)
    assert table.column_names == picked and table.num_rows == len(df)
    assert pq.ParquetFile(path).metadata.num_row_groups >= 1


def test_csvs_and_character_map(dataset, meta):
    for key, sub in (("train_csv", synth.TRAIN_DIR), ("supplemental_csv", synth.SUPPLEMENTAL_DIR)):
        with open(dataset[key], newline="", encoding="utf-8") as f:
            header = next(csv.reader(f))
        assert header == ["path", "file_id", "sequence_id", "participant_id", "phrase"]
        df = pd.read_csv(dataset[key])
        assert (df["path"] == sub + "/" + df["file_id"].astype(str) + ".parquet").all()
        for col in ("file_id", "sequence_id", "participant_id"):
            assert df[col].dtype == np.int64
    assert len(meta) == dataset["n_sequences"] == 3 * SMALL["sequences_per_file"]
    assert meta["sequence_id"].is_unique
    assert Path(dataset["character_map"]).read_bytes() == vocab.character_map_bytes()


def test_every_csv_row_has_its_contiguous_sequence(dataset, meta):
    root = Path(dataset["out_dir"])
    for rel, rows in meta.groupby("path"):
        t = pq.read_table(root / rel, columns=[schema.INDEX_COLUMN, FRAME]).to_pandas()
        ids = t.index.to_numpy()
        starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
        assert len(starts) == len(np.unique(ids)), "a sequence's rows are split"
        assert set(ids) == set(rows["sequence_id"])
        for sid, grp in t.groupby(level=0):
            assert (grp[FRAME].to_numpy() == np.arange(len(grp))).all()


def test_same_seed_same_data_other_seed_differs(tmp_path):
    args = dict(files=1, sequences_per_file=4, participants=3, supplemental_files=0)
    a = synth.generate_dataset(tmp_path / "a", seed=3, **args)
    b = synth.generate_dataset(tmp_path / "b", seed=3, **args)
    c = synth.generate_dataset(tmp_path / "c", seed=4, **args)
    assert Path(a["train_csv"]).read_bytes() == Path(b["train_csv"]).read_bytes()
    da, db, dc = (pd.read_parquet(s["train_files"][0]) for s in (a, b, c))
    np.testing.assert_array_equal(da.to_numpy(), db.to_numpy())
    np.testing.assert_array_equal(da.index.to_numpy(), db.index.to_numpy())
    assert Path(a["train_csv"]).read_bytes() != Path(c["train_csv"]).read_bytes()
    assert da.shape != dc.shape or not np.array_equal(da.to_numpy(), dc.to_numpy(), equal_nan=True)


def test_all_characters_have_distinct_configurations():
    table = synth.configuration_table()
    assert set(table) == set(vocab.char_to_index())
    chars = sorted(table)
    shapes = np.stack([synth.character_shape(c) for c in chars])
    dist = synth._shape_distance(shapes[:, None], shapes[None])
    off = dist[np.triu_indices(len(chars), 1)]
    assert off.min() > 0.05, "two characters share a hand configuration"
    # Real letters come in close pairs; the table keeps some.
    for a, b in (("m", "n"), ("u", "v")):
        assert dist[chars.index(a), chars.index(b)] < np.percentile(off, 5)
    assert set(synth.MOTION_PATHS) == {"j", "z"}


def _digest(table: dict[str, np.ndarray]) -> str:
    return hashlib.sha256(np.concatenate([table[c] for c in sorted(table)]).tobytes()).hexdigest()


_DIGEST = ("from fingerspell.synth import generator as synth; from tests.test_synth import _digest; "
           "print(_digest(synth.configuration_table()))")


def test_configuration_table_does_not_depend_on_seed(tmp_path):
    before = {c: p.copy() for c, p in synth.configuration_table().items()}
    synth.generate_dataset(tmp_path / "x", files=1, sequences_per_file=2, participants=2,
                           seed=99, supplemental_files=0)
    after = synth.configuration_table()
    assert all(np.array_equal(before[c], after[c]) for c in before)
    # A fresh interpreter with other hash and global numpy seeds builds the same table.
    digests = {_digest(after)}
    for hash_seed in ("1", "2"):
        code = f"import numpy as np; np.random.seed({hash_seed}); {_DIGEST}"
        env = dict(os.environ, PYTHONHASHSEED=hash_seed)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             check=True, env=env, cwd=Path(__file__).resolve().parent.parent)
        digests.add(out.stdout.strip())
    assert len(digests) == 1


def _hold_shapes(seed: int, phrase: str, n_seqs: int) -> tuple[np.ndarray, np.ndarray]:
    """Scale-free, handedness-free 2-D hand shapes at each held letter, with labels."""
    people = synth.make_participants(6, np.random.default_rng([seed, 1]))
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for k in range(n_seqs):
        p = people[k % len(people)]
        s = synth.render_sequence(phrase, p, rng)
        h = s.part(s.dominant)[s.hold_frames, :, :2].astype(np.float64)
        h = h - h[:, :1]
        h[..., 0] *= -1 if p.left_handed else 1
        h /= np.linalg.norm(h[:, 9], axis=-1)[:, None, None]
        seen = ~np.isnan(h[:, 5, 0])
        xs.append(h[seen].reshape(seen.sum(), -1))
        ys += [c for c, ok in zip(phrase, seen) if ok]
    return np.concatenate(xs), np.array(ys)


def test_letters_learned_under_one_seed_read_under_another():
    phrase = "abcdefghiklmnopqrstuvwxy"
    xa, ya = _hold_shapes(1, phrase, 6)
    xb, yb = _hold_shapes(2, phrase, 6)
    labels = sorted(set(ya))
    centroids = np.stack([xa[ya == c].mean(0) for c in labels])
    pred = np.array(labels)[np.argmin(((xb[:, None] - centroids[None]) ** 2).sum(-1), axis=1)]
    assert (pred == yb).mean() > 0.5  # chance is 1/24


def test_left_handed_signers_use_the_left_hand(dataset, meta, frames):
    lefties = set(dataset["left_handed_participants"])
    assert lefties, "no left-handed participant among 8"
    many = synth.make_participants(100, np.random.default_rng(0))
    assert 0.1 <= np.mean([p.left_handed for p in many]) <= 0.2
    seen = {part: frames.groupby(level=0)[_columns(part)[0]].apply(lambda s: s.notna().mean())
            for part in HAND_PARTS}
    for row in meta.itertuples():
        if row.sequence_id in dataset["short_hand_sequences"]:
            continue
        left, right = seen[HAND_PARTS[0]][row.sequence_id], seen[HAND_PARTS[1]][row.sequence_id]
        if row.participant_id in lefties:
            assert left > 0.5 > right
        else:
            assert right > 0.5 > left


def test_arm_pose_follows_the_hand(frames):
    pose = _xyz(frames, "pose")
    for part, arm in zip(HAND_PARTS, (schema.LEFT_ARM_POSE, schema.RIGHT_ARM_POSE)):
        hand = _xyz(frames, part)
        seen = ~np.isnan(hand[:, 0, 0])
        assert seen.sum() > 20
        wrist_gap = np.linalg.norm(pose[seen, arm[1], :2] - hand[seen, 0, :2], axis=-1)
        assert np.median(wrist_gap) < 0.02
        index_gap = np.linalg.norm(pose[seen, arm[3], :2] - hand[seen, 5, :2], axis=-1)
        assert np.median(index_gap) < 0.05
        # The elbow moves with the wrist (the hand rises from rest and signs).
        assert np.corrcoef(pose[:, arm[0], 1], pose[:, arm[1], 1])[0, 1] > 0.5


def test_missing_hands_are_whole_hand_nan(frames):
    for part in HAND_PARTS:
        nan = np.isnan(frames[_columns(part)].to_numpy())
        assert (nan.all(axis=1) | ~nan.any(axis=1)).all(), "partly missing hand"
    for part in ("face", "pose"):
        assert not frames[_columns(part)].isna().any().any()
    hands = _xyz(frames, HAND_PARTS[1])
    xy = hands[~np.isnan(hands[:, 0, 0]), :, :2]
    assert np.mean((xy > -0.05) & (xy < 1.05)) > 0.95  # normalized image space
    z = hands[~np.isnan(hands[:, 0, 0]), :, 2]
    assert np.abs(z[:, 0]).max() < 1e-6 and np.abs(z).max() < 0.5  # depth relative to the wrist


def test_dominant_hand_missing_some_frames_and_short_sequences_to_drop(dataset, meta, frames):
    short = set(dataset["short_hand_sequences"])
    assert len(short) == 3 * round(synth.SHORT_HAND_FRACTION * SMALL["sequences_per_file"])
    lefties = set(dataset["left_handed_participants"])
    missing_share = []
    for row in meta.itertuples():
        seq = frames.loc[[row.sequence_id]]
        part = HAND_PARTS[0] if row.participant_id in lefties else HAND_PARTS[1]
        visible = int(seq[_columns(part)[0]].notna().sum())
        n, L = len(seq), len(row.phrase)
        if row.sequence_id in short:
            assert visible < 2 * L
        else:
            assert visible >= 2 * L
            assert 5 * L <= n <= 17 * L + 20  # about 5-12 frames a character, plus lead frames
            missing_share.append(1 - visible / n)
    assert 0.04 < np.mean(missing_share) < 0.3
    assert np.mean(np.array(missing_share) > 0) > 0.5


def test_phrases_fit_the_map_and_length():
    rng = np.random.default_rng(0)
    drawn = phrases.random_phrases(rng, 2000)
    assert all(1 <= len(p) <= 31 and not vocab.unknown_chars(p) for p in drawn)
    kinds = {phrases.phrase_type(p) for p in drawn}
    assert kinds == {"address", "url", "phone"}
    assert 12 <= np.mean([len(p) for p in drawn]) <= 24
    for kind in phrases.PHRASE_TYPES:
        drawn = [phrases.random_phrase(rng, kind) for _ in range(200)]
        assert all(phrases.phrase_type(p) == kind for p in drawn)


def test_dataset_phrases_fit_the_map(meta):
    assert meta["phrase"].map(lambda p: 1 <= len(p) <= 31 and not vocab.unknown_chars(p)).all()


@pytest.mark.parametrize("phrase, kind", [
    ("3 creekhouse", "address"), ("6920 northeast 661st road", "address"),
    ("2708 west 77th", "address"), ("1383 william lanier", "address"),
    ("www.sudinfo.be", "url"), ("https://www.keainfo.gr", "url"),
    ("arabradio.us/vana", "url"), ("/verkstader/20180101", "url"), ("scales/kuhaylan", "url"),
    ("+3515218895", "phone"), ("4082494707", "phone"), ("290-119-109-582", "phone"),
    ("(408) 249-4707", "phone"),
])
def test_phrase_type_on_real_style_examples(phrase, kind):
    assert phrases.phrase_type(phrase) == kind


def test_bad_arguments_are_refused(tmp_path, capsys):
    with pytest.raises(ValueError, match="files must be >= 1"):
        synth.generate_dataset(tmp_path / "a", files=0)
    with pytest.raises(ValueError, match="participants"):
        synth.generate_dataset(tmp_path / "a", participants=-1)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["synth", "--out", str(tmp_path / "b"), "--sequences-per-file", "0"])
    assert exit_info.value.code == 2
    assert "--sequences-per-file must be >= 1" in capsys.readouterr().err
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "keep.txt").write_text("x")
    with pytest.raises(ValueError, match="not empty"):
        synth.generate_dataset(tmp_path / "c", files=1, sequences_per_file=1)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()  # checked before writing


def test_cli_writes_and_summarises(tmp_path, capsys):
    out = tmp_path / "cli"
    assert cli.main(["synth", "--out", str(out), "--files", "1", "--sequences-per-file", "3",
                     "--participants", "2", "--supplemental-files", "0"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.count("\n") == 0 and "3 train + 0 supplemental" in line
    assert not list(out.glob(f"{synth.SUPPLEMENTAL_DIR}/*.parquet"))
    assert len(pd.read_csv(out / synth.TRAIN_CSV)) == 3
    assert cli.main(["synth", "--out", str(out), "--files", "1", "--sequences-per-file", "2",
                     "--participants", "2", "--supplemental-files", "0", "--overwrite"]) == 0
    assert len(list((out / synth.TRAIN_DIR).glob("*.parquet"))) == 1
