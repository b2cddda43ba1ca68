"""Left-right symmetry of MediaPipe's face mesh (468 points) and pose (33 points), and named face subsets.

Mirroring a left-handed signer (x -> 1 - x) turns the left eye into a right eye, so after the flip point
`i` must take the label `FACE_SYMMETRY[i]` (`POSE_SYMMETRY[i]` for the pose): its mirror partner.
Midline points map to themselves (28 of the 468 face points). Both maps are involutions.

How `FACE_SYMMETRY` was made (MediaPipe 0.10.21; the wheel has no canonical face model, so from real data):
Face Mesh (static images) ran on 29 frames of the real selfie clip `signer_selfie.mp4`; in each frame the
3-D points (x, y in pixels, z times the width), centred and scaled, were reflected (x -> -x), rigidly
re-aligned with the originals (Kabsch) and matched point to point by optimal assignment
(`scipy.optimize.linear_sum_assignment`), iterated to a fixed point; one assignment over the summed costs
of all frames gave the map. It was then checked on the mesh topology `FACEMESH_TESSELATION`: it maps
`FACEMESH_LEFT_EYE` and `_LEFT_EYEBROW` onto their `RIGHT_` twins and every tesselation edge onto an edge
except 6. Those 6 are the diagonals of 3 quads that MediaPipe triangulates differently on the two
sides ({59, 60, 75, 166} / {289, 290, 305, 392}, {20, 79, 238, 239} / {250, 309, 458, 459} and
{30, 161, 246, 247} / {260, 388, 466, 467}), so the tesselation itself is not exactly symmetric: an
exhaustive search finds no automorphism of it that swaps the eyes, and with those 6 diagonals removed
exactly one, this map, so geometry and topology agree. The result has a plain pattern, a sign that
MediaPipe numbered its mesh this way: the 28 midline points are 0-2, 4-6, 8-19, 94, 151, 152, 164, 168,
175, 195, 197, 199 and 200, and the other 220 points below 248 map in order onto 248-467.
`tests/test_face_mesh.py` checks the map against the mesh, MediaPipe's named parts and real faces.

The constants are literal so that this module needs no MediaPipe.
"""
from __future__ import annotations

#: FACE_SYMMETRY[i]: the face-mesh point that is the mirror image of point i.
FACE_SYMMETRY: tuple[int, ...] = (
      0,   1,   2, 248,   4,   5,   6, 249,   8,   9,  10,  11,  12,  13,  14,  15,
     16,  17,  18,  19, 250, 251, 252, 253, 254, 255, 256, 257, 258, 259, 260, 261,
    262, 263, 264, 265, 266, 267, 268, 269, 270, 271, 272, 273, 274, 275, 276, 277,
    278, 279, 280, 281, 282, 283, 284, 285, 286, 287, 288, 289, 290, 291, 292, 293,
    294, 295, 296, 297, 298, 299, 300, 301, 302, 303, 304, 305, 306, 307, 308, 309,
    310, 311, 312, 313, 314, 315, 316, 317, 318, 319, 320, 321, 322, 323,  94, 324,
    325, 326, 327, 328, 329, 330, 331, 332, 333, 334, 335, 336, 337, 338, 339, 340,
    341, 342, 343, 344, 345, 346, 347, 348, 349, 350, 351, 352, 353, 354, 355, 356,
    357, 358, 359, 360, 361, 362, 363, 364, 365, 366, 367, 368, 369, 370, 371, 372,
    373, 374, 375, 376, 377, 378, 379, 151, 152, 380, 381, 382, 383, 384, 385, 386,
    387, 388, 389, 390, 164, 391, 392, 393, 168, 394, 395, 396, 397, 398, 399, 175,
    400, 401, 402, 403, 404, 405, 406, 407, 408, 409, 410, 411, 412, 413, 414, 415,
    416, 417, 418, 195, 419, 197, 420, 199, 200, 421, 422, 423, 424, 425, 426, 427,
    428, 429, 430, 431, 432, 433, 434, 435, 436, 437, 438, 439, 440, 441, 442, 443,
    444, 445, 446, 447, 448, 449, 450, 451, 452, 453, 454, 455, 456, 457, 458, 459,
    460, 461, 462, 463, 464, 465, 466, 467,   3,   7,  20,  21,  22,  23,  24,  25,
     26,  27,  28,  29,  30,  31,  32,  33,  34,  35,  36,  37,  38,  39,  40,  41,
     42,  43,  44,  45,  46,  47,  48,  49,  50,  51,  52,  53,  54,  55,  56,  57,
     58,  59,  60,  61,  62,  63,  64,  65,  66,  67,  68,  69,  70,  71,  72,  73,
     74,  75,  76,  77,  78,  79,  80,  81,  82,  83,  84,  85,  86,  87,  88,  89,
     90,  91,  92,  93,  95,  96,  97,  98,  99, 100, 101, 102, 103, 104, 105, 106,
    107, 108, 109, 110, 111, 112, 113, 114, 115, 116, 117, 118, 119, 120, 121, 122,
    123, 124, 125, 126, 127, 128, 129, 130, 131, 132, 133, 134, 135, 136, 137, 138,
    139, 140, 141, 142, 143, 144, 145, 146, 147, 148, 149, 150, 153, 154, 155, 156,
    157, 158, 159, 160, 161, 162, 163, 165, 166, 167, 169, 170, 171, 172, 173, 174,
    176, 177, 178, 179, 180, 181, 182, 183, 184, 185, 186, 187, 188, 189, 190, 191,
    192, 193, 194, 196, 198, 201, 202, 203, 204, 205, 206, 207, 208, 209, 210, 211,
    212, 213, 214, 215, 216, 217, 218, 219, 220, 221, 222, 223, 224, 225, 226, 227,
    228, 229, 230, 231, 232, 233, 234, 235, 236, 237, 238, 239, 240, 241, 242, 243,
    244, 245, 246, 247,
)

#: POSE_SYMMETRY[i]: MediaPipe Pose's LEFT_x <-> RIGHT_x partner of point i (0, the nose, maps to itself;
#: 1-3 left eye inner/eye/outer <-> 4-6, 7 <-> 8 ears, 9 <-> 10 mouth corners, then the body in pairs
#: 11 <-> 12 shoulders ... 31 <-> 32 foot index).
POSE_SYMMETRY: tuple[int, ...] = (
    0, 4, 5, 6, 1, 2, 3, 8, 7, 10, 9,  # nose, eyes, ears, mouth
    12, 11, 14, 13, 16, 15, 18, 17, 20, 19, 22, 21,  # shoulders, elbows, wrists, pinkies, index, thumbs
    24, 23, 26, 25, 28, 27, 30, 29, 32, 31,  # hips, knees, ankles, heels, foot index
)

# Face subsets of the 130-point landmark set (sorted face-mesh indices). MediaPipe's LEFT is the subject's
# own left (the right of an unmirrored image).

#: The 40 points of `FACEMESH_LIPS` (outer and inner lip contours); closed under FACE_SYMMETRY.
LIPS: tuple[int, ...] = (
    0, 13, 14, 17, 37, 39, 40, 61, 78, 80, 81, 82, 84, 87, 88, 91,
    95, 146, 178, 181, 185, 191, 267, 269, 270, 291, 308, 310, 311, 312, 314, 317,
    318, 321, 324, 375, 402, 405, 409, 415,
)

#: The 16 points of `FACEMESH_LEFT_EYE` (the eyelid contour); its mirror image is RIGHT_EYE.
LEFT_EYE: tuple[int, ...] = (
    249, 263, 362, 373, 374, 380, 381, 382, 384, 385, 386, 387, 388, 390, 398, 466,
)

#: The 16 points of `FACEMESH_RIGHT_EYE`; its mirror image is LEFT_EYE.
RIGHT_EYE: tuple[int, ...] = (
    7, 33, 133, 144, 145, 153, 154, 155, 157, 158, 159, 160, 161, 163, 173, 246,
)

#: Four nose points, closed under FACE_SYMMETRY: the tip (1) and the base of the nose below it (2, the
#: subnasal point), both on the midline, and the two nostril wings (98 <-> 327, the alar points beside
#: the nostrils), the same four that public Kaggle ASL notebooks use.
NOSE: tuple[int, ...] = (1, 2, 98, 327)
