"""Real recordings through an exported model: transcribe a video, render with a prediction."""
from __future__ import annotations

import subprocess
import sys

import pytest

from fingerspell.export.predictor import TFLitePredictor

from tests.fixtures import fixture, require

VIDEO = fixture("signer_selfie.mp4")
POSE = fixture("0ff215ef_right_hand.pose")
pytestmark = [pytest.mark.slow, pytest.mark.video]  # an exported model, MediaPipe and subprocesses


def test_transcribe_video_prints_the_models_text(exported, subprocess_env):
    require(VIDEO)
    done = subprocess.run([sys.executable, "-m", "fingerspell", "transcribe", str(VIDEO), "--model", str(exported),
                           "--quiet"], capture_output=True, text=True, env=subprocess_env, timeout=600)
    assert done.returncode == 0, done.stderr
    from fingerspell.video.extract import landmarks_from_video
    from fingerspell.video.transcribe import select_columns

    predictor = TFLitePredictor(exported)
    landmarks = landmarks_from_video(VIDEO, progress=False)
    assert landmarks.shape == (58, 1629)
    assert done.stdout == predictor(select_columns(landmarks, predictor.selected_columns)) + "\n"


def test_transcribe_pose_file_and_errors(exported, tmp_path, subprocess_env):
    require(VIDEO, POSE)
    from fingerspell.video.transcribe import transcribe

    assert isinstance(transcribe(POSE, exported, progress=False), str)
    not_video = tmp_path / "notes.mp4"
    not_video.write_text("not a video")
    done = subprocess.run([sys.executable, "-m", "fingerspell", "transcribe", str(not_video), "--model", str(exported)],
                          capture_output=True, text=True, env=subprocess_env, timeout=600)
    assert done.returncode == 2 and "notes.mp4" in done.stderr and done.stdout == ""
    no_model = subprocess.run([sys.executable, "-m", "fingerspell", "transcribe", str(VIDEO), "--model", str(tmp_path)],
                              capture_output=True, text=True, env=subprocess_env, timeout=600)
    assert no_model.returncode == 2 and "model.tflite: not found" in no_model.stderr
