"""Real recordings: landmarks from video, images and .pose files (`extract`), video -> text (`transcribe`), drawings (`render`).

Needs the `video` extra (mediapipe, OpenCV, pose-format).
"""
