"""The tf.data pipeline: preprocessed records -> batches of (frames, decoder input) and targets."""
from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf

from fingerspell import features, machine
from fingerspell.config import Config, ConfigError
from fingerspell.data import records, schema, vocab
from fingerspell.features import augment
from fingerspell.files import atomic_path, atomic_write_json

AUTOTUNE = tf.data.AUTOTUNE
logger = logging.getLogger(__name__)


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


@dataclass(frozen=True)
class Inventory:
    """Sequences and frames per split group (participant or file) and the longest phrase.

    Read from `manifest.json`, which preprocess writes with these counts, so a run starts
    without reading any record; folders without them (shards copied by hand, or written
    by an older version) are scanned once instead.
    """

    key: str
    sequences: dict[int, int]
    frames: dict[int, int]
    longest_phrase: dict | None  # {"sequence_id", "characters"}, None without sequences

    def check_phrases_fit(self, max_phrase_len: int) -> None:
        """Refuse, before training, a phrase longer than the targets (it would stop training mid-epoch)."""
        longest = self.longest_phrase
        if longest and longest["characters"] > max_phrase_len:
            raise ValueError(f"sequence {longest['sequence_id']} has a phrase of {longest['characters']} characters, "
                             f"longer than max_target_len - 2 = {max_phrase_len}; raise max_target_len")


def inventory_from_manifest(data_dir: Path, shards: list[Path], key: str) -> Inventory | None:
    """The inventory of `shards` from the manifest's per-file results; None if it lacks the counts."""
    try:
        manifest = records.read_manifest(data_dir)
    except FileNotFoundError:
        return None
    wanted = {p.resolve() for p in shards}
    used = [f for f in manifest.get("files", []) if f.get("shard") and (Path(data_dir) / f["shard"]).resolve() in wanted]
    if len(used) != len(wanted) or any("participants" not in f for f in used):
        return None
    sequences: dict[int, int] = {}
    frames: dict[int, int] = {}
    for f in used:
        groups = ({int(p): c for p, c in f["participants"].items()} if key == records.PARTICIPANT_ID
                  else {int(f["file_id"]): {"sequences": f["kept"], "frames": f["frames_kept"]}})
        for group, counts in groups.items():
            sequences[group] = sequences.get(group, 0) + counts["sequences"]
            frames[group] = frames.get(group, 0) + counts["frames"]
    longest = max((f["longest_phrase"] for f in used if f.get("longest_phrase")),
                  key=lambda item: item["characters"], default=None)
    return Inventory(key, sequences, frames, longest)


def scan_inventory(shards: list[Path], key: str) -> Inventory:
    """The inventory from one pass over the records, parsing only ids, frame counts and phrases."""
    spec = {key: tf.io.FixedLenFeature([], tf.int64), records.SEQUENCE_ID: tf.io.FixedLenFeature([], tf.int64),
            records.N_FRAMES: tf.io.FixedLenFeature([], tf.int64),
            records.PHRASE: tf.io.FixedLenFeature([], tf.string)}

    def fields(batch):
        parsed = tf.io.parse_example(batch, spec)
        return (parsed[key], parsed[records.SEQUENCE_ID], parsed[records.N_FRAMES],
                tf.strings.length(parsed[records.PHRASE]))

    ds = tf.data.TFRecordDataset([str(p) for p in shards], num_parallel_reads=min(len(shards), 8))
    parts = list(ds.batch(4096).map(fields, num_parallel_calls=AUTOTUNE).as_numpy_iterator())
    groups, sequence_ids, n_frames, lengths = ([np.concatenate(part) for part in zip(*parts)] if parts
                                               else [np.zeros(0, np.int64)] * 4)
    sequences = {int(g): int(np.count_nonzero(groups == g)) for g in np.unique(groups)}
    frames = {int(g): int(n_frames[groups == g].sum()) for g in np.unique(groups)}
    longest = None
    if len(lengths):
        worst = int(np.argmax(lengths))
        longest = {"sequence_id": int(sequence_ids[worst]), "characters": int(lengths[worst])}
    return Inventory(key, sequences, frames, longest)


def read_inventory(data_dir: Path, shards: list[Path], key: str) -> Inventory:
    found = inventory_from_manifest(data_dir, shards, key)
    if found is None:
        logger.info("%s: no per-participant counts in a manifest (shards copied by hand, or preprocessed by an "
                    "older version): scanning the records once; re-run `fingerspell preprocess` to skip this",
                    data_dir)
        found = scan_inventory(shards, key)
    return found


def load_or_make_split(data_dir: Path, shards: list[Path], cfg: Config, run_dir: Path | None,
                       resume: bool = False) -> dict:
    """The held-out groups, saved as RUN_DIR/split.json so a resumed run and the export see the same split.

    A resumed run must find the same shards it started with, and reads its counts from split.json
    (no inventory, so no scan of a folder without manifest counts); a new run makes a new split.
    """
    path = run_dir / "split.json" if run_dir else None
    names = sorted(p.name for p in shards)
    if resume and path and path.exists():
        split = json.loads(path.read_text())
        if split.get("shards") != names:
            raise ValueError(f"the preprocessed shards differ from those the run in {run_dir} started with "
                             f"(see {path}); resume with the same --data-dir")
        return split
    if run_dir:  # a copy of another split's held-out records must never be read as this one's
        (Path(run_dir) / VALIDATION_RECORDS).unlink(missing_ok=True)
    inventory = read_inventory(Path(data_dir), shards, split_key(cfg))
    inventory.check_phrases_fit(cfg.max_target_len - 2)
    groups = inventory.sequences
    split = {"key": inventory.key, "validation": choose_validation(groups, cfg.val_fraction, cfg.seed),
             "sequences": sum(groups.values()), "counts": {str(g): n for g, n in groups.items()},
             "frames": {str(g): n for g, n in inventory.frames.items()}, "shards": names}
    if path:
        atomic_write_json(path, split)
    return split


def split_key(cfg: Config) -> str:
    return records.PARTICIPANT_ID if cfg.val_split == "participant" else records.FILE_ID


def _in_split(split: dict, validation: bool):
    held = tf.constant(split["validation"], tf.int64)

    def keep(record):
        member = tf.reduce_any(tf.equal(record[split["key"]], held))
        return member if validation else tf.logical_not(member)
    return keep


# --- datasets -------------------------------------------------------------------------------

def training_batches(records_ds: tf.data.Dataset, cfg: Config, training: bool, batch_size: int,
                     seed: int | None = None, shuffle_buffer: int = 4096) -> tf.data.Dataset:
    """((frames [B, T, F], decoder input [B, L-1]), targets [B, L-1]) batches.

    Each sequence keeps its own length (at most max_frames); a batch is padded with NaN rows,
    which the model masks, to a multiple of `features.FRAME_BUCKET` frames. Training batches are
    shuffled (within `shuffle_buffer` records), augmented and endless. Augmented batches are built
    as dominant-side points, augmented in time per sequence (and spliced by CutMix), padded,
    augmented in space and normalised batch-wise: the same `features` functions as
    `features.preprocess_frames`, in the same order.
    """
    table = _char_table()
    augmenting = training and augment.any_enabled(cfg)
    if augmenting and cfg.normalization != "hand":
        raise ConfigError(f"augmentation works on the 'hand' frame preprocessing, not normalization="
                          f"{cfg.normalization!r}; set the probabilities of {augment.enabled(cfg)} to 0")

    def tokens_of(phrase):
        tokens = tokenize(phrase, table, cfg.max_target_len)
        return tokens[:-1], tokens[1:]

    def to_points(record):
        points = features.side_points(record["landmarks"], cfg.max_frames, cfg.landmark_set)
        group = record[records.PARTICIPANT_ID] if cfg.aug_cutmix_p > 0 else tf.constant(0, tf.int64)
        return {"points": points, "length": tf.shape(points)[0], "phrase": record["phrase"], "group": group}

    def to_example(item):
        dec_in, targets = tokens_of(item["phrase"])
        if augmenting:
            x = features.shorten(augment.temporal(item["points"], cfg), cfg.max_frames)
        else:
            x = features.model_input(item["landmarks"], cfg.max_frames, cfg.normalization, cfg.padding_mask,
                                     cfg.landmark_set)
        return {"x": x, "length": tf.shape(x)[0], "dec_in": dec_in, "targets": targets}

    def finish(batch):
        x, length, dec_in = batch["x"], batch["length"], batch["dec_in"]
        if augmenting:
            x = features.normalize(augment.spatial(x, cfg))
            dec_in = augment.tokens(dec_in, cfg)
        return (mask_padding(x, length, cfg), dec_in), batch["targets"]

    if training:  # endless: Keras counts epochs by steps_per_epoch
        records_ds = records_ds.shuffle(max(1, shuffle_buffer), seed=cfg.seed if seed is None else seed,
                                        reshuffle_each_iteration=True).repeat()
    # Ordered maps, even where reading is not: each epoch's records stay within their pass over the
    # data (an unordered map lets a record of the next pass overtake one of this pass, so a batch could
    # hold one sequence twice and miss another).
    if augmenting:
        items = records_ds.map(to_points, num_parallel_calls=AUTOTUNE, deterministic=True)
        if cfg.aug_cutmix_p > 0:
            items = cutmix_same_signer(items, cfg)
    else:
        items = records_ds
    ds = items.map(to_example, num_parallel_calls=AUTOTUNE, deterministic=True)
    x_shape = ([None, cfg.landmark_set.n_side_points, 3] if augmenting
               else [None, features.feature_dim(cfg.normalization, cfg.landmark_set)])
    ds = ds.padded_batch(batch_size, padded_shapes={"x": x_shape, "length": [], "dec_in": [None], "targets": [None]},
                         padding_values={"x": math.nan, "length": 0, "dec_in": vocab.PAD, "targets": vocab.PAD},
                         drop_remainder=training)
    ds = ds.map(finish, num_parallel_calls=AUTOTUNE)
    if cfg.trim_padding:
        ds = ds.map(trim_padding, num_parallel_calls=AUTOTUNE)
    return ds.prefetch(AUTOTUNE)


def cutmix_same_signer(items: tf.data.Dataset, cfg: Config) -> tf.data.Dataset:
    """Pairs of sequences of the same signer, each of the two spliced with the other with probability
    aug_cutmix_p (its start and the other's end, phrases cut at the same fraction), else passed on as
    it is; a signer's unpaired sequence waits for the signer's next one."""

    def one(points, phrase, other_points, other_phrase, group):
        points, phrase = augment.maybe_cutmix(points, phrase, other_points, other_phrase, cfg)
        return tf.data.Dataset.from_tensors({"points": points, "length": tf.shape(points)[0], "phrase": phrase,
                                             "group": group})

    def splice(pair):
        a = pair["points"][0, :pair["length"][0]]
        b = pair["points"][1, :pair["length"][1]]
        first, second = pair["phrase"][0], pair["phrase"][1]
        return one(a, first, b, second, pair["group"][0]).concatenate(one(b, second, a, first, pair["group"][1]))

    shapes = {"points": [None, cfg.landmark_set.n_side_points, 3], "length": [], "phrase": [], "group": []}
    padding = {"points": math.nan, "length": 0, "phrase": "", "group": tf.constant(0, tf.int64)}
    pairs = items.group_by_window(
        lambda item: item["group"],
        lambda _, window: window.padded_batch(2, padded_shapes=shapes, padding_values=padding, drop_remainder=True),
        window_size=2)
    return pairs.flat_map(splice)


def mask_padding(x: tf.Tensor, length: tf.Tensor, cfg: Config) -> tf.Tensor:
    """[B, T, F] normalised features whose rows past each sequence's `length` become the model's
    padding: NaN rows to a multiple of FRAME_BUCKET frames (masked by the model), or, without
    padding_mask, zero rows to max_frames (the seed's geometry)."""
    inside = tf.range(tf.shape(x)[1])[None, :] < length[:, None]
    if not cfg.padding_mask:
        x = tf.where(inside[..., None], x, tf.zeros_like(x))
        return tf.pad(x, [[0, 0], [0, cfg.max_frames - tf.shape(x)[1]], [0, 0]])
    x = tf.where(inside[..., None], x, tf.fill(tf.shape(x), math.nan))
    # never past max_frames (a multiple of the subsampling): the transformer's position table ends there
    target = tf.minimum(features.padded_length(tf.shape(x)[1], cfg.subsampling, features.FRAME_BUCKET), cfg.max_frames)
    return tf.pad(x, [[0, 0], [0, target - tf.shape(x)[1]], [0, 0]], constant_values=math.nan)


def model_batch(sequences: list, cfg: Config) -> tf.Tensor:
    """Raw sequences [T, C] (the config's landmark set) -> one model input batch [B, T', F], preprocessed
    and padded as validation pads them (for callers that hold sequences rather than records)."""
    xs = [features.model_input(tf.convert_to_tensor(s, tf.float32), cfg.max_frames, cfg.normalization,
                               cfg.padding_mask, cfg.landmark_set) for s in sequences]
    length = tf.constant([int(x.shape[0]) for x in xs])
    longest = int(tf.reduce_max(length))
    return mask_padding(tf.stack([features.pad_to(x, longest, math.nan) for x in xs]), length, cfg)


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
    """(frames [B, T, F] padded as for training, phrase strings [B]) batches for decoded scoring."""
    def to_example(record):
        x = features.model_input(record["landmarks"], cfg.max_frames, cfg.normalization, cfg.padding_mask,
                                 cfg.landmark_set)
        return {"x": x, "length": tf.shape(x)[0], "phrase": record["phrase"]}

    def finish(batch):
        return mask_padding(batch["x"], batch["length"], cfg), batch["phrase"]

    width = features.feature_dim(cfg.normalization, cfg.landmark_set)
    ds = records_ds.map(to_example, num_parallel_calls=AUTOTUNE).padded_batch(
        batch_size, padded_shapes={"x": [None, width], "length": [], "phrase": []},
        padding_values={"x": math.nan, "length": 0, "phrase": ""})
    return ds.map(finish, num_parallel_calls=AUTOTUNE).prefetch(AUTOTUNE)


# --- what a run reads: the split, the held-out records, the cache ----------------------------

VALIDATION_RECORDS = "validation.tfrecord"
#: Decoded size of a record beyond its landmarks (phrase, ids, tensor headers), a generous guess.
RECORD_OVERHEAD_BYTES = 512
#: Without `cache_memory_gb`, the cache may take this share of the memory available at the start.
CACHE_SHARE_OF_AVAILABLE = 0.5


@dataclass
class RunData:
    """The records a run trains and validates on, and how they are read."""

    train: tf.data.Dataset
    valid: tf.data.Dataset
    split: dict
    n_train: int
    n_valid: int
    cached: bool  # training records kept in memory after the first epoch
    train_bytes: int  # their decoded size
    shards: list[Path]  # every shard of the data directory


def decoded_bytes(sequences: int, frames: int, columns: int = schema.HANDS_ARMS.n_columns) -> int:
    """Memory that decoded records take in tf.data's cache: float32 landmarks (`columns` per frame: those
    of the landmark set read) plus a per-record overhead."""
    return frames * columns * 4 + sequences * RECORD_OVERHEAD_BYTES


def cache_budget(cfg: Config) -> int | None:
    """Bytes the record cache may take: `cache_memory_gb`, else half the available memory (None: unknown)."""
    if cfg.cache_memory_gb:
        return int(cfg.cache_memory_gb * 1e9)
    available = machine.available_memory()
    return None if available is None else int(available * CACHE_SHARE_OF_AVAILABLE)


def decide_cache(setting: str, need: int, budget: int | None) -> bool:
    """`cache=on|off` as given; `auto` caches only what fits the budget (nothing when it is unknown)."""
    if setting != "auto":
        return setting == "on"
    return budget is not None and need <= budget


def write_validation_records(shards: list[Path], key: str, groups: list[int], path: Path) -> int:
    """Copy the records of the held-out groups, as they are, into one TFRecord file; return how many.

    One pass over the shards when a run starts (parsing only the group id): afterwards
    validation reads this file and never the training shards again.
    """
    spec = {key: tf.io.FixedLenFeature([], tf.int64)}
    held = tf.constant(sorted(groups), tf.int64)

    def held_out(batch):
        ids = tf.io.parse_example(batch, spec)[key]
        return tf.boolean_mask(batch, tf.reduce_any(tf.equal(ids[:, None], held[None, :]), axis=1))

    ds = tf.data.TFRecordDataset([str(p) for p in shards], num_parallel_reads=min(len(shards), 8))
    count = 0
    with atomic_path(path, suffix=records.SHARD_SUFFIX) as tmp, records.ShardWriter(tmp) as writer:
        for batch in ds.batch(1024).map(held_out, num_parallel_calls=AUTOTUNE).prefetch(2).as_numpy_iterator():
            for record in batch:
                writer.write(record)
            count += len(batch)
    return count


def validation_records(shards: list[Path], split: dict, n_valid: int, run_dir: Path | None,
                       cfg: Config) -> tf.data.Dataset:
    """The held-out records (the config's landmark set): RUN_DIR/validation.tfrecord (written on the
    run's first start), or, without a run directory, a filter over all shards."""
    if run_dir is None:
        return records.load_dataset(shards, landmarks=cfg.landmark_set).filter(_in_split(split, validation=True))
    path = Path(run_dir) / VALIDATION_RECORDS
    if not path.exists():
        written = write_validation_records(shards, split["key"], split["validation"], path)
        if written != n_valid:
            path.unlink()
            raise ValueError(f"found {written} held-out records in the shards, but {Path(run_dir) / 'split.json'} "
                             f"expects {n_valid}: the shards changed since the split was made, or the manifest "
                             f"does not describe them (re-run `fingerspell preprocess`)")
    return records.load_dataset([path], landmarks=cfg.landmark_set)


def op_determinism_enabled() -> bool:
    """Whether the process called `tf.config.experimental.enable_op_determinism()` (tests that must
    repeat exactly do); TensorFlow has no public getter, so the private one is used when present."""
    try:
        from tensorflow.python.framework.config import is_op_determinism_enabled
    except ImportError:  # pragma: no cover - a TensorFlow without it: the environment variable it replaced
        return os.environ.get("TF_DETERMINISTIC_OPS", "").lower() in ("1", "true")
    return bool(is_op_determinism_enabled())


def split_datasets(data_dir: Path, cfg: Config, run_dir: Path | None = None, resume: bool = False) -> RunData:
    """The run's training and validation records from a preprocessed directory.

    Validation records are copied once into the run directory; training records are
    cached in memory when `cache` says so (`auto`: when their decoded size fits the
    budget), else streamed from the shards each epoch in a new file order, with
    non-deterministic parallel reads unless the process asked for op determinism.
    """
    shards = records.shard_paths(data_dir)
    records.check_layout(shards, cfg.landmark_set)
    split = load_or_make_split(Path(data_dir), shards, cfg, run_dir, resume)
    held = {str(g) for g in split["validation"]}
    n_valid = sum(n for g, n in split["counts"].items() if g in held)
    n_train = split["sequences"] - n_valid
    if "frames" not in split:  # a split.json written before splits kept frame counts
        split["frames"] = {str(g): n for g, n in read_inventory(Path(data_dir), shards, split["key"]).frames.items()}
    frames = split["frames"]
    columns = cfg.landmark_set.n_columns
    valid_bytes = decoded_bytes(n_valid, sum(n for g, n in frames.items() if g in held), columns)
    train_bytes = decoded_bytes(n_train, sum(n for g, n in frames.items() if g not in held), columns)
    budget = cache_budget(cfg)
    cached = decide_cache(cfg.cache, train_bytes + valid_bytes, budget)
    if cfg.cache == "auto":
        logger.info("cache=auto: the records take ~%.2f GB decoded (training %.2f GB), the cache may use %s: %s",
                    (train_bytes + valid_bytes) / 1e9, train_bytes / 1e9,
                    "an unknown amount" if budget is None else f"{budget / 1e9:.2f} GB",
                    "caching them in memory" if cached else "streaming the training records from disk")
    train = training_records(shards, split, cfg, cached)
    valid = validation_records(shards, split, n_valid, run_dir, cfg)
    if cached or decide_cache(cfg.cache, valid_bytes, budget):
        valid = valid.cache()
    return RunData(train, valid, split, n_train, n_valid, cached, train_bytes, shards)


def training_records(shards: list[Path], split: dict, cfg: Config, cached: bool,
                     part: tuple[int, int] | None = None) -> tf.data.Dataset:
    """The training records of `shards`, cached or streamed in a new file order each epoch.

    `part` = (count, index) keeps every count-th record from the index-th: a worker's share when
    workers split the records rather than the files. Every worker must then read the same records
    in the same order, so the reads are deterministic and the file order is drawn from `cfg.seed`.
    """
    train = records.load_dataset(shards, shuffle_files=not cached, seed=cfg.seed,
                                 deterministic=op_determinism_enabled() or part is not None,
                                 landmarks=cfg.landmark_set)
    train = train.filter(_in_split(split, validation=False))
    if part is not None:
        train = train.shard(*part)
    return train.cache() if cached else train


# --- several workers: who reads which training records ---------------------------------------

#: File sharding only while the most loaded worker has at most this many times the records of the least:
#: every worker supplies an equal share of each global batch, so a worker with fewer records repeats them
#: more often (oversampling its files).
MAX_FILE_IMBALANCE = 1.2


@dataclass(frozen=True)
class ShardPlan:
    """How training records are divided among workers: `file` (each worker reads its own shards, balanced
    by their training records) or `data` (every worker reads all shards and keeps every n-th record,
    when there are fewer shards with training records than workers, or the files cannot be balanced
    within `MAX_FILE_IMBALANCE`); `why`: the reason for `data`."""

    by: str
    shards: list[list[Path]]  # per worker
    records: list[int]  # training records per worker
    why: str = ""

    def describe(self) -> dict:
        described = {"sharding": self.by, "worker_train_records": self.records,
                     "worker_shards": [len(s) for s in self.shards]}
        return {**described, "sharding_why": self.why} if self.why else described


def shard_training_counts(data_dir: Path, shards: list[Path], split: dict) -> dict[Path, int]:
    """Training records per shard: from the manifest's per-file counts, else from one scan of the group ids."""
    held = {int(g) for g in split["validation"]}
    try:
        listed = {(Path(data_dir) / f["shard"]).resolve(): f for f in records.read_manifest(data_dir).get("files", [])
                  if f.get("shard")}
    except FileNotFoundError:
        listed = {}
    found = [listed.get(p.resolve()) for p in shards]
    if all(f is not None and "participants" in f for f in found):
        if split["key"] == records.PARTICIPANT_ID:
            return {p: sum(c["sequences"] for g, c in f["participants"].items() if int(g) not in held)
                    for p, f in zip(shards, found)}
        return {p: 0 if int(f["file_id"]) in held else int(f["kept"]) for p, f in zip(shards, found)}
    spec = {split["key"]: tf.io.FixedLenFeature([], tf.int64)}
    counts = {}
    for path in shards:
        ids = [tf.io.parse_example(batch, spec)[split["key"]].numpy() for batch in
               tf.data.TFRecordDataset(str(path)).batch(4096)]
        counts[path] = int(np.sum(~np.isin(np.concatenate(ids), list(held)))) if ids else 0
    return counts


def plan_shards(counts: dict[Path, int], workers: int) -> ShardPlan:
    """By file when every worker can get shards with training records (largest shards first, each to the
    worker with the fewest records so far) and the loads end within `MAX_FILE_IMBALANCE` of each other,
    else by data; the same plan on every worker."""
    useful = sorted((p for p, n in counts.items() if n > 0), key=lambda p: (-counts[p], str(p)))
    total = sum(counts.values())
    by_data = [total // workers + (1 if i < total % workers else 0) for i in range(workers)]
    if len(useful) < workers:
        return ShardPlan("data", [sorted(counts)] * workers, by_data,
                         f"{len(useful)} shard(s) with training records for {workers} workers")
    shares: list[list[Path]] = [[] for _ in range(workers)]
    loads = [0] * workers
    for path in useful:
        worker = loads.index(min(loads))
        shares[worker].append(path)
        loads[worker] += counts[path]
    if max(loads) > MAX_FILE_IMBALANCE * min(loads):
        return ShardPlan("data", [sorted(counts)] * workers, by_data,
                         f"the shards split into loads {loads}, more than {MAX_FILE_IMBALANCE}x apart: by file, "
                         f"a worker's records would be oversampled")
    return ShardPlan("file", [sorted(s) for s in shares], loads)


#: A worker's shuffle and augmentation seed: the run's plus this many times its input pipeline id.
WORKER_SEED_STRIDE = 1_000_003


def worker_training_batches(records_ds: tf.data.Dataset, cfg: Config, batch_size: int, seed: int,
                            shuffle_buffer: int, pipeline_id: int) -> tf.data.Dataset:
    """`training_batches` for one worker's input pipeline: its own record shuffle and augmentation.

    Every worker sets the same global seed, from which the augmentation's random ops take theirs: without
    this, every worker would draw the same random values. Pipeline 0 builds exactly what one process does;
    pipeline i shuffles with `seed + WORKER_SEED_STRIDE * i` and builds its augmentation under that global
    seed. (The file order, `training_records`, stays the run's on every worker: data sharding needs it.)
    """
    if pipeline_id == 0:
        return training_batches(records_ds, cfg, True, batch_size, seed=seed, shuffle_buffer=shuffle_buffer)
    from tensorflow.python.eager import context  # the global seed, to set it back (no public getter)

    own = seed + WORKER_SEED_STRIDE * pipeline_id
    previous = context.global_seed()
    tf.random.set_seed(own)  # the dataset's functions are traced here and keep seeds drawn from it
    try:
        return training_batches(records_ds, cfg, True, batch_size, seed=own, shuffle_buffer=shuffle_buffer)
    finally:
        tf.random.set_seed(previous)


def worker_training_records(data: "RunData", cfg: Config, plan: ShardPlan, worker: int) -> tf.data.Dataset:
    """The training records worker `worker` reads under `plan`."""
    if plan.by == "file":
        return training_records(plan.shards[worker], data.split, cfg, data.cached)
    return training_records(plan.shards[worker], data.split, cfg, data.cached, part=(len(plan.shards), worker))
