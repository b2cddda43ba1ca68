"""The tf.data pipeline: preprocessed records -> batches of (frames, decoder input) and targets."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import tensorflow as tf

from fingerspell import features
from fingerspell.features import augment
from fingerspell.data import records, vocab
from fingerspell.config import Config, ConfigError
from fingerspell.files import atomic_write_json

AUTOTUNE = tf.data.AUTOTUNE


def _char_table() -> tf.lookup.StaticHashTable:
    chars = list(vocab.char_to_index())
    return tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(chars, [vocab.char_to_index()[c] for c in chars]),
        default_value=-1)


def tokenize(phrase: tf.Tensor, table: tf.lookup.StaticHashTable, max_len: int) -> tf.Tensor:
    """`<` + phrase + `>` as ids padded with PAD to `max_len` (tf twin of vocab.encode)."""
    ids = table.lookup(tf.strings.bytes_split(phrase))
    tf.debugging.assert_non_negative(ids, message="phrase has characters outside the character map")
    tf.debugging.assert_less_equal(tf.size(ids), max_len - 2, message="phrase longer than max_target_len - 2")
    ids = tf.concat([[vocab.START], ids, [vocab.END]], axis=0)
    return tf.pad(ids, [[0, max_len - tf.size(ids)]], constant_values=vocab.PAD)


# --- validation split ---------------------------------------------------------------------

def choose_validation(groups: dict[int, int], fraction: float, seed: int) -> list[int]:
    """Pick whole groups (participants or files) until they hold `fraction` of the sequences."""
    if len(groups) < 2:
        raise ValueError(f"a held-out split needs at least 2 groups (participants or files), found {len(groups)}; "
                         f"with one signer use val_split=file")
    order = np.random.default_rng(seed).permutation(sorted(groups))
    total, chosen, held = sum(groups.values()), [], 0
    for group in order[:-1]:
        if held >= fraction * total:
            break
        chosen.append(int(group))
        held += groups[int(group)]
    return sorted(chosen)


def scan_records(shards: list[Path], key: str, max_phrase_len: int) -> dict[int, int]:
    """Sequences per participant_id or file_id, parsing only the ids and phrases.

    Also checks, before training starts, that every phrase fits the target length
    (a longer one would otherwise stop training mid-epoch).
    """
    spec = {key: tf.io.FixedLenFeature([], tf.int64), records.SEQUENCE_ID: tf.io.FixedLenFeature([], tf.int64),
            records.PHRASE: tf.io.FixedLenFeature([], tf.string)}

    def fields(record):
        parsed = tf.io.parse_single_example(record, spec)
        return parsed[key], parsed[records.SEQUENCE_ID], tf.strings.length(parsed[records.PHRASE])

    ds = tf.data.TFRecordDataset([str(p) for p in shards]).map(fields, num_parallel_calls=AUTOTUNE).batch(4096)
    groups, sequence_ids, lengths = (np.concatenate(part) if part else np.zeros(0, np.int64)
                                     for part in zip(*ds.as_numpy_iterator()))
    if len(lengths) and lengths.max() > max_phrase_len:
        worst = int(np.argmax(lengths))
        raise ValueError(f"sequence {int(sequence_ids[worst])} has a phrase of {int(lengths[worst])} characters, "
                         f"longer than max_target_len - 2 = {max_phrase_len}; raise max_target_len")
    ids, counts = np.unique(groups, return_counts=True)
    return {int(i): int(c) for i, c in zip(ids, counts)}


def load_or_make_split(shards: list[Path], cfg: Config, run_dir: Path | None, resume: bool = False) -> dict:
    """The held-out groups, saved as RUN_DIR/split.json so a resumed run and the export see the same split.

    A resumed run must find the same shards it started with; a new run makes a new split.
    """
    path = run_dir / "split.json" if run_dir else None
    names = sorted(p.name for p in shards)
    if resume and path and path.exists():
        split = json.loads(path.read_text())
        if split.get("shards") != names:
            raise ValueError(f"the preprocessed shards differ from those the run in {run_dir} started with "
                             f"(see {path}); resume with the same --data")
        return split
    key = "participant_id" if cfg.val_split == "participant" else "file_id"
    groups = scan_records(shards, key, cfg.max_target_len - 2)
    split = {"key": key, "validation": choose_validation(groups, cfg.val_fraction, cfg.seed),
             "sequences": sum(groups.values()), "counts": {str(g): n for g, n in groups.items()}, "shards": names}
    if path:
        atomic_write_json(path, split)
    return split


def _in_split(split: dict, validation: bool):
    held = tf.constant(split["validation"], tf.int64)

    def keep(record):
        member = tf.reduce_any(tf.equal(record[split["key"]], held))
        return member if validation else tf.logical_not(member)
    return keep


# --- datasets -------------------------------------------------------------------------------

def training_batches(records_ds: tf.data.Dataset, cfg: Config, training: bool, batch_size: int,
                     seed: int | None = None, shuffle_buffer: int = 4096) -> tf.data.Dataset:
    """((frames [B, frame_len, F], decoder input [B, L-1]), targets [B, L-1]) batches.

    Training batches are shuffled (within `shuffle_buffer` records), augmented and endless.
    Augmented batches are built as dominant-side points, resampled per sequence, then
    augmented spatially and normalised batch-wise: the same `features` functions as
    `features.preprocess_frames`, in the same order.
    """
    table = _char_table()
    augmenting = training and bool(cfg.augmentations())
    if augmenting and cfg.normalization != "hand":
        raise ConfigError(f"augmentation works on the 'hand' frame preprocessing, not normalization="
                          f"{cfg.normalization!r}; turn off {cfg.augmentations()}")

    def tokens_of(record):
        tokens = tokenize(record["phrase"], table, cfg.max_target_len)
        return tokens[:-1], tokens[1:]

    def to_example(record):
        dec_in, targets = tokens_of(record)
        if augmenting:
            points = augment.temporal(features.dominant_side(record["landmarks"]), cfg)
            frames = features.fit_length(points, cfg.frame_len, fill=math.nan)
        else:
            frames = features.model_input(record["landmarks"], cfg.frame_len, cfg.normalization)
        return (frames, dec_in), targets

    def augment_batch(inputs, targets):
        points, dec_in = inputs
        return (features.normalize(augment.spatial(points, cfg)), dec_in), targets

    if training:  # endless: Keras counts epochs by steps_per_epoch
        buffer = max(1, min(shuffle_buffer, 16384 if cfg.cache else 4096))
        records_ds = records_ds.shuffle(buffer, seed=cfg.seed if seed is None else seed,
                                        reshuffle_each_iteration=True).repeat()
    ds = records_ds.map(to_example, num_parallel_calls=AUTOTUNE).batch(batch_size, drop_remainder=training)
    if augmenting:
        ds = ds.map(augment_batch, num_parallel_calls=AUTOTUNE)
    if cfg.trim_padding:
        ds = ds.map(trim_padding, num_parallel_calls=AUTOTUNE)
    return ds.prefetch(AUTOTUNE)


TRIM_STEP = 16  # decoder lengths come in multiples of this: a handful of shapes for XLA to compile


def trim_padding(inputs, targets):
    """Drop the target positions that are padding in the whole batch.

    Phrases are at most 31 characters, yet targets are padded to 63 positions: the
    decoder would spend half its work on padding. The loss is masked and the decoder
    causal, so cutting columns that are PAD in every row changes no logit or loss value.
    """
    frames, dec_in = inputs
    longest = tf.reduce_max(tf.reduce_sum(tf.cast(tf.not_equal(targets, vocab.PAD), tf.int32), axis=1))
    width = tf.minimum((longest + TRIM_STEP - 1) // TRIM_STEP * TRIM_STEP, tf.shape(targets)[1])
    return (frames, dec_in[:, :width]), targets[:, :width]


def evaluation_batches(records_ds: tf.data.Dataset, cfg: Config, batch_size: int) -> tf.data.Dataset:
    """(frames [B, frame_len, F], phrase strings [B]) batches for greedy-decoded scoring."""
    def to_example(record):
        return features.model_input(record["landmarks"], cfg.frame_len, cfg.normalization), record["phrase"]
    return records_ds.map(to_example, num_parallel_calls=AUTOTUNE).batch(batch_size).prefetch(AUTOTUNE)


def split_datasets(data_dir: Path, cfg: Config, run_dir: Path | None = None, resume: bool = False):
    """(train records, validation records, split info) from a preprocessed directory."""
    shards = records.shard_paths(data_dir)
    # Shards are interleaved in a new order each epoch unless the records are cached.
    all_records = records.load_dataset(shards, shuffle_files=not cfg.cache, seed=cfg.seed)  # checks the layout
    split = load_or_make_split(shards, cfg, run_dir, resume)
    train = all_records.filter(_in_split(split, validation=False))
    valid = all_records.filter(_in_split(split, validation=True))
    if cfg.cache:
        train, valid = train.cache(), valid.cache()
    return train, valid, split
