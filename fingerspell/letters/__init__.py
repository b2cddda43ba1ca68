"""Static signs (letters, digits, handshapes) from MediaPipe hand landmarks: items, features, model, CLI."""
