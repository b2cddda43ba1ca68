"""The transformer: cached greedy decoding, early stop, masked loss; the config; the metric."""
import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from bench.seed_recipe import seed_config
from fingerspell import metric
from fingerspell.data import vocab
from fingerspell.config import Config, ConfigError
from fingerspell.model.transformer import build_model

SMALL = Config(num_hid=32, num_heads=4, ff_dim=64, dropout=0.0, max_frames=32, max_target_len=16)


def teacher_forced_greedy(model, frames, steps):
    """Greedy decoding by re-running the full decoder on the prefix each step (no cache)."""
    tokens = np.full((frames.shape[0], 1), vocab.START, np.int32)
    for _ in range(steps):
        logits = model((frames, tf.constant(tokens))).numpy()[:, -1]
        logits[:, [vocab.PAD, vocab.START]] = -np.inf
        tokens = np.concatenate([tokens, logits.argmax(-1)[:, None].astype(np.int32)], axis=1)
    return tokens[:, 1:]


def test_cached_decoding_equals_full_recomputation():
    tf.random.set_seed(0)
    model = build_model(SMALL, 78)
    frames = tf.random.normal([4, SMALL.max_frames, 78])
    cached = model.generate(frames).numpy()
    full = teacher_forced_greedy(model, frames, SMALL.max_target_len - 1)
    for row_cached, row_full in zip(cached, full):
        n = list(row_full).index(vocab.END) + 1 if vocab.END in row_full else len(row_full)
        np.testing.assert_array_equal(row_cached[:n], row_full[:n])
        assert (row_cached[n:] == vocab.PAD).all()


def test_decoding_stops_once_every_sequence_has_ended():
    model = build_model(SMALL, 78)
    classifier_bias = model.classifier.bias
    bias = np.zeros(vocab.N_CLASSES, np.float32)
    bias[vocab.END] = 100.0  # always predict `>`
    classifier_bias.assign(bias)
    out = model.generate(tf.random.normal([3, SMALL.max_frames, 78])).numpy()
    assert (out[:, 0] == vocab.END).all() and (out[:, 1:] == vocab.PAD).all()


def test_masked_loss_ignores_padding():
    model = build_model(SMALL, 78)
    targets = tf.constant([[5, 6, vocab.END, vocab.PAD, vocab.PAD]])
    logits = tf.random.normal([1, 5, vocab.N_CLASSES])
    changed = tf.concat([logits[:, :3], logits[:, 3:] + 50.0 * tf.random.normal([1, 2, vocab.N_CLASSES])], axis=1)
    assert float(model.masked_loss(targets, logits)) == pytest.approx(float(model.masked_loss(targets, changed)))
    assert float(model.masked_loss(targets, logits)) > 0


def test_label_smoothing_spares_pad_and_start():
    """The loss equals cross-entropy against a target that puts the smoothing mass on the 59
    characters and `>` only (numpy reference), so the model is never taught to emit PAD or START."""
    model = build_model(SMALL, 78)
    targets = np.array([[5, 6, vocab.END]])
    logits = np.random.default_rng(0).normal(size=(1, 3, vocab.N_CLASSES)).astype(np.float32)
    allowed = np.ones(vocab.N_CLASSES)
    allowed[[vocab.PAD, vocab.START]] = 0.0
    ls = SMALL.label_smoothing
    target = (1 - ls) * np.eye(vocab.N_CLASSES)[targets] + ls * allowed / allowed.sum()
    log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    expected = -(target * log_p).sum(-1).mean()
    assert ls > 0 and target[..., vocab.PAD].max() == 0 and target[..., vocab.START].max() == 0
    assert float(model.masked_loss(tf.constant(targets), tf.constant(logits))) == pytest.approx(expected, rel=1e-5)


def test_logits_are_float32_under_mixed_precision():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = build_model(SMALL, 78)
        frames = tf.zeros([1, SMALL.max_frames, 78])
        logits = model((frames, tf.fill([1, 4], vocab.START)))
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert logits.dtype == tf.float32


def test_adamw_decays_only_weight_matrices():
    from fingerspell.training.trainer import make_optimizer

    model = build_model(SMALL, 78)
    model((tf.zeros([1, SMALL.max_frames, 78]), tf.fill([1, 4], vocab.START)))
    optimizer, _ = make_optimizer(Config(), steps_per_epoch=10)
    decayed = {v.name for v in model.trainable_variables if optimizer._use_weight_decay(v)}
    assert "kernel" in decayed and not decayed & {"bias", "gamma", "beta", "embeddings"}
    assert optimizer.global_clipnorm == Config().clipnorm and optimizer.clipnorm is None


def test_key_dim_defaults_to_num_hid_over_heads():
    assert Config().attention_key_dim == Config().num_hid // Config().num_heads
    assert seed_config().attention_key_dim == 200
    ours = build_model(Config.from_dict({"preset": "seed"}), 78).count_params()
    seed = build_model(seed_config(), 63).count_params()
    assert seed > ours  # four times the attention projections


def test_config_overrides_and_errors(tmp_path):
    cfg = Config().override(["num_hid=64", "aug_affine_p=0", "learning_rate=3e-4", "val_split=file"])
    assert (cfg.num_hid, cfg.aug_affine_p, cfg.learning_rate, cfg.val_split) == (64, 0.0, 3e-4, "file")
    with pytest.raises(ConfigError, match="unknown config key 'num_hidden'"):
        Config().override(["num_hidden=3"])
    with pytest.raises(ConfigError, match="expected a int"):
        Config().override(["epochs=many"])
    with pytest.raises(ConfigError, match="val_split"):
        Config().override(["val_split=random"])
    path = tmp_path / "c.json"
    cfg.save(path)
    assert Config.load(path) == cfg
    path.write_text(json.dumps({"bogus": 1}))
    with pytest.raises(ConfigError, match="unknown config keys"):
        Config.load(path)


def test_score_is_normalized_total_levenshtein():
    assert metric.score(["abc", "de"], ["abc", "de"]) == 1.0
    # N = 5, D = 1 (one substitution) + 2 (two deletions)
    assert metric.score(["abc", "de"], ["abd", ""]) == pytest.approx((5 - 3) / 5)
    assert metric.score(["ab"], ["abcdef"]) == pytest.approx((2 - 4) / 2)


def test_vocab_round_trip():
    ids = vocab.encode("1383 william lanier")
    assert ids[0] == vocab.START and len(ids) == vocab.MAX_TARGET_LEN
    assert vocab.decode(ids[1:]) == "1383 william lanier"
    with pytest.raises(ValueError, match="outside the map"):
        vocab.encode("Capital")


def test_the_character_map_users_see_in_data_is_the_packaged_one():
    """`data/character_to_prediction_index.json` is a copy for users; the package reads its own."""
    from pathlib import Path

    users_copy = Path(__file__).resolve().parent.parent / "data" / vocab.CHARACTER_MAP_NAME
    assert users_copy.read_bytes() == vocab.character_map_bytes()
    assert len(vocab.char_to_index()) == vocab.N_CHARS


def test_presets_apply_first_and_land_in_the_config():
    from fingerspell.config import PRESETS

    for order in (["preset=kaggle", "enc_layers=8"], ["enc_layers=8", "preset=kaggle"]):
        cfg = Config().override(order)
        assert (cfg.preset, cfg.num_hid, cfg.enc_layers, cfg.ff_dim) == ("kaggle", 192, 8, PRESETS["kaggle"]["ff_dim"])
        assert cfg.to_dict()["preset"] == "kaggle"
    assert Config().override(["preset=small"]) == Config()
    with pytest.raises(ConfigError, match="expected one of"):
        Config().override(["preset=huge"])
    with pytest.raises(ConfigError, match="rotary positions rotate pairs"):
        Config().override(["num_hid=200", "num_heads=8"])


@pytest.mark.parametrize("preset,limit_mb", [("kaggle", 15.0), ("large", 40.0)])
def test_preset_weights_fit_their_fp16_size(preset, limit_mb):
    """fp16 stores two bytes a weight: `kaggle` under 15 MB, `large` within Kaggle's 40 MB (with room for the graph)."""
    params = build_model(Config.from_dict({"preset": preset}), 78).count_params()
    assert 2 * params < limit_mb * 1e6 * 0.95
    if preset == "large":
        assert 2 * params > 0.6 * limit_mb * 1e6, "large is the most that fits"


def test_a_config_saved_before_presets_loads_as_the_seed_geometry(tmp_path):
    old = {**{k: v for k, v in Config.from_dict({"preset": "seed"}).to_dict().items()
              if k not in ("preset", "max_frames", "padding_mask", "encoder", "ctc_weight", "decoder", "aug_speed_p",
                           "aug_affine_p", "aug_frame_drop_p", "aug_point_drop_p", "aug_point_drop_rate")},
           "frame_len": 128, "aug_speed": True, "aug_affine": False, "aug_frame_drop": True,
           "aug_point_dropout": True, "aug_point_dropout_rate": 0.05}
    (tmp_path / "config.json").write_text(json.dumps(old))
    cfg = Config.load(tmp_path / "config.json")
    assert (cfg.preset, cfg.max_frames, cfg.padding_mask, cfg.encoder, cfg.ctc_weight) == ("seed", 128, False,
                                                                                          "transformer", 0.0)
    assert (cfg.aug_speed_p, cfg.aug_affine_p, cfg.aug_point_drop_rate) == (1.0, 0.0, 0.05)


def test_a_time_budget_alone_trains_until_it_ends():
    assert Config().training_epochs == 30
    assert Config(time_budget_minutes=20.0).training_epochs > 10_000
    assert Config(time_budget_minutes=20.0, epochs=5).training_epochs == 5


def test_a_padded_batch_decodes_like_each_sequence_alone():
    """The mask reaches every layer: padding a sequence with NaN rows changes no encoder output, no CTC
    logit and no decoded token, whatever the batch's length."""
    cfg = Config(num_hid=32, num_heads=4, ff_dim=64, enc_layers=2, dropout=0.0, max_target_len=16)
    tf.random.set_seed(1)
    model = build_model(cfg, 78)
    rng = np.random.default_rng(0)
    rows = [rng.normal(size=(n, 78)).astype(np.float32) for n in (5, 17, 40)]
    batch = np.full((3, 64, 78), np.nan, np.float32)
    for i, row in enumerate(rows):
        batch[i, :len(row)] = row
    encoded, mask = model.encode(batch)
    for decoder in ("attention", "ctc", "joint"):
        together = model.generate(batch, decoder=decoder).numpy()
        for i, row in enumerate(rows):
            alone = np.concatenate([row, np.full((len(row) % 2, 78), np.nan, np.float32)])[None]
            np.testing.assert_array_equal(model.generate(alone, decoder=decoder).numpy()[0], together[i])
            if decoder == "attention":
                own, own_mask = model.encode(alone)
                n = int(own_mask.numpy().sum())
                assert n == int(mask.numpy()[i].sum()) == -(-len(row) // 2)
                np.testing.assert_allclose(encoded.numpy()[i, :n], own.numpy()[0, :n], atol=1e-5)
