"""The face-mesh and pose symmetry maps and the face subsets (fingerspell.data.face_mesh)."""
from __future__ import annotations

import numpy as np
import pytest

from fingerspell.data import face_mesh as fm
from tests.fixtures import fixture, require

FACE, POSE = fm.FACE_SYMMETRY, fm.POSE_SYMMETRY


@pytest.fixture(scope="module")
def connections():
    """MediaPipe's face-mesh edge sets (only the constants; no model is loaded)."""
    pytest.importorskip("mediapipe")
    from mediapipe.python.solutions import face_mesh_connections

    return face_mesh_connections


def edges(connection_set) -> set[frozenset[int]]:
    return {frozenset(e) for e in connection_set}


def mirror_edges(connection_set) -> set[frozenset[int]]:
    return {frozenset(FACE[i] for i in e) for e in connection_set}


def points(connection_set) -> tuple[int, ...]:
    return tuple(sorted({i for e in connection_set for i in e}))


@pytest.mark.parametrize("sym, n", [(FACE, 468), (POSE, 33)])
def test_the_maps_are_involutions_of_the_right_size(sym, n):
    assert len(sym) == n and sorted(sym) == list(range(n))
    assert all(type(j) is int for j in sym)
    assert all(sym[sym[i]] == i for i in range(n))


def test_the_face_midline():
    fixed = [i for i in range(468) if FACE[i] == i]
    assert len(fixed) == 28 and {1, 2, 4, 10, 13, 14, 152, 168} <= set(fixed)  # nose, lips, forehead, chin
    # MediaPipe numbered the mesh so: the other points below 248 have their partners, in order, in 248-467
    assert [FACE[i] for i in range(248) if i not in fixed] == list(range(248, 468))


def test_the_tesselation_is_symmetric_but_for_three_quads(connections):
    """Every mesh edge maps to a mesh edge except the diagonals of 3 quads triangulated differently on the two
    sides: there the mirror image of the diagonal is the quad's other diagonal."""
    mesh = edges(connections.FACEMESH_TESSELATION)
    bad = {e for e in mesh if frozenset(FACE[i] for i in e) not in mesh}
    assert bad == {frozenset(e) for e in [(75, 166), (289, 290), (79, 238), (250, 459), (161, 247), (260, 466)]}
    neighbours: dict[int, set[int]] = {}
    for a, b in map(tuple, mesh):
        neighbours.setdefault(a, set()).add(b)
        neighbours.setdefault(b, set()).add(a)
    for a, b in map(tuple, bad):
        c, d = neighbours[a] & neighbours[b]  # the quad a, c, b, d
        assert frozenset((FACE[c], FACE[d])) in mesh and frozenset((FACE[a], FACE[b])) not in mesh


@pytest.mark.parametrize("part", ["EYE", "EYEBROW"])  # the irises are points 468-477 of the refined mesh
def test_left_parts_map_onto_right_parts(connections, part):
    left = getattr(connections, f"FACEMESH_LEFT_{part}")
    right = getattr(connections, f"FACEMESH_RIGHT_{part}")
    assert mirror_edges(left) == edges(right) and mirror_edges(right) == edges(left)


@pytest.mark.parametrize("part", ["LIPS", "FACE_OVAL", "NOSE"])
def test_midline_parts_map_onto_themselves(connections, part):
    connection_set = getattr(connections, f"FACEMESH_{part}")
    assert mirror_edges(connection_set) == edges(connection_set)


def test_pose_symmetry_swaps_left_and_right_by_name():
    mp = pytest.importorskip("mediapipe")
    names = {lm.value: lm.name for lm in mp.solutions.pose.PoseLandmark}
    assert sorted(names) == list(range(33))
    for i, name in names.items():
        partner = name.replace("LEFT", "@").replace("RIGHT", "LEFT").replace("@", "RIGHT")
        assert names[POSE[i]] == partner, (i, name)
    assert [i for i in range(33) if POSE[i] == i] == [0]  # only the nose is on the midline


def test_the_face_subsets(connections):
    assert (len(fm.LIPS), len(fm.LEFT_EYE), len(fm.RIGHT_EYE), len(fm.NOSE)) == (40, 16, 16, 4)
    assert fm.LIPS == points(connections.FACEMESH_LIPS)
    assert fm.LEFT_EYE == points(connections.FACEMESH_LEFT_EYE)
    assert fm.RIGHT_EYE == points(connections.FACEMESH_RIGHT_EYE)
    assert fm.NOSE == (1, 2, 98, 327) and set(fm.NOSE) <= set(points(connections.FACEMESH_TESSELATION))


def test_the_face_subsets_are_closed_under_the_mirror():
    mirror = lambda group: tuple(sorted(FACE[i] for i in group))  # noqa: E731
    for group in (fm.LIPS, fm.LEFT_EYE, fm.RIGHT_EYE, fm.NOSE):
        assert list(group) == sorted(set(group))
    assert mirror(fm.LIPS) == fm.LIPS and mirror(fm.NOSE) == fm.NOSE
    assert mirror(fm.LEFT_EYE) == fm.RIGHT_EYE and mirror(fm.RIGHT_EYE) == fm.LEFT_EYE
    all_points = fm.LIPS + fm.NOSE + fm.LEFT_EYE + fm.RIGHT_EYE
    assert len(set(all_points)) == 76


def _reflect_onto(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """`a` moved by the best rigid reflection (rotation times a mirror, Kabsch with det -1) onto `b`."""
    ca, cb = a.mean(0), b.mean(0)
    u, _, vt = np.linalg.svd((a - ca).T @ (b - cb))
    d = np.eye(3)
    d[2, 2] = -np.sign(np.linalg.det(vt.T @ u.T))
    return (a - ca) @ (vt.T @ d @ u.T).T + cb


@pytest.mark.parametrize("name, mean_limit, nearest_share", [
    ("7bd6dd48_left_hand.pose", 0.03, 0.9),  # a frontal face
    ("0ff215ef_right_hand.pose", 0.07, 0.6),  # a face turned a little
])
def test_mirrored_real_faces_land_on_their_partners(name, mean_limit, nearest_share):
    """On real Holistic faces, the best reflection of the mesh onto its relabelled self fits closely, and most
    reflected points have their partner as nearest neighbour; a map wrong in 40 points fits far worse."""
    pose_format = pytest.importorskip("pose_format")
    path = fixture(name)
    require(path)
    pose = pose_format.Pose.read(path.read_bytes())
    offset = 0
    for component in pose.header.components:
        if component.name == "FACE_LANDMARKS":
            break
        offset += len(component.points)
    width = pose.header.dimensions.width  # x and y are stored in pixels, z normalized by the width
    data = np.asarray(np.ma.getdata(pose.body.data), dtype=np.float64)[:, 0, offset:offset + 468, :3]
    conf = np.asarray(np.ma.getdata(pose.body.confidence))[:, 0, offset:offset + 468]
    sym = np.array(FACE)
    wrong = sym.copy()
    moved = np.random.default_rng(0).choice(468, 40, replace=False)
    wrong[moved] = wrong[np.roll(moved, 1)]
    frames = [t for t in range(len(data)) if (conf[t] > 0).all()]
    assert len(frames) >= 10
    for t in frames:
        p = data[t] * [1.0, 1.0, width]
        size = np.sqrt(((p - p.mean(0)) ** 2).sum(1).mean())
        fitted = _reflect_onto(p, p[sym])
        error = np.linalg.norm(fitted - p[sym], axis=1) / size
        nearest = np.argmin(((fitted[:, None] - p[None]) ** 2).sum(-1), axis=1)
        wrong_error = np.linalg.norm(_reflect_onto(p, p[wrong]) - p[wrong], axis=1) / size
        assert error.mean() < mean_limit and (nearest == sym).mean() > nearest_share, t
        assert wrong_error.mean() > 2 * error.mean(), t
