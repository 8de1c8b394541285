"""The Pathfinder generator: ``lra generate pathfinder --out DIR`` writes
``DIR/pathfinder<size>/<difficulty>/{imgs,metadata}``, the layout of the LRA release, read by
the same loader (:mod:`lra.data.pathfinder`). Deterministic given the seed, independent of the
number of worker processes.

Pathfinder (Linsley et al. 2018; Kim, Linsley et al. 2020)
----------------------------------------------------------
Re-implemented from the description of the original generator and LRA's settings for it, in
continuous coordinates with numpy (not by porting its code). An image holds:

- two *target paths* of ``contour_length`` dashes each. Their first dashes start
  ``seed_distance`` apart near the centre (the first start lies at least ``2 * seed_distance``
  from the border, as in the original) and the two paths then grow outwards one dash at a time.
  A dash is a segment of ``dash_length`` and stroke width ``thickness``; from the end of a dash
  the path steps ``margin`` further, turns by an angle d and steps ``margin`` again before the
  next dash starts, so consecutive dashes are separated by a gap of about ``2 * margin``. The
  turn d is drawn from ``|d| <= pi / (2 * continuity)`` with weight ``cos(continuity * d)**2``
  (the original's continuity prior) among the turns whose dash stays inside the image and
  clear of every other dash;
- ``n_distractors`` *distractor paths* of ``distractor_length`` dashes, grown the same way from
  random starts (a distractor that cannot be placed is dropped, as the original allows);
- two disk *markers* of ``marker_radius``: one at the start of a random target path, the other
  at the far end of the *same* path (label 1, positive) or of the *other* target path
  (label 0, negative). Both target paths and all distractors are drawn either way, so the
  label is only visible by following a path.

Clearance: strokes of different paths keep an edge-to-edge gap of at least ``separation``
times ``2 * margin`` (default 1.0), strokes keep the same gap from the markers of other paths
(from the first dash on, for the start markers), and a path keeps it from its own non-adjacent
dashes. Inside a path the gap between consecutive strokes is at most ``2 * margin -
thickness``, so bridging gaps of that size joins exactly the dashes of one path; the test suite
checks this on rendered images. Strokes and disks are anti-aliased with a one-pixel linear ramp
of the distance to the centre line, strokes scaled by ``contrast``, markers at full intensity.

Simplified compared to the original: no single-dash distractor fill (LRA's settings turn it
off anyway), one contrast per image instead of per-dash contrast jitter, an analytic
anti-aliasing ramp instead of supersampling and Lanczos resizing, and an explicit minimum
clearance between paths where the original dilates occupancy masks.

LRA's settings (listed in its TFDS builder) by image size: 32 -- dash 2, thickness 0.5, margin
1, marker 1.5, seed distance 7, continuity 1.0, contrast 2 x 0.75 = 1.5; 64 -- thickness 1,
margin 1, marker 2.5, seed distance 12, continuity 1.8, contrast 0.8; 128 -- thickness 1.5,
margin 2 or 3 (drawn per image), marker 3, seed distance 20, continuity 1.8, contrast 0.9. The
builder does not list the dash length at 64 and 128; we take the generator's default, 5.
Distractor length is ``contour_length // 3`` and their number ``K // distractor_length`` (the
original is Python 2 code, so ``/`` on integers floors) with K = 20, 22, 35 for sizes 32, 64,
128. With the clearance above, about 3 of the 5 distractors
fit into a 32 x 32 image (those that do not fit are dropped); at 128 nearly all 8 fit.

Speed: a path that runs into a dead end (the border, another path) backs up a few dashes and
regrows rather than restarting the image. Measured on one core of a small CPU box: about 35
images/s at 32 x 32, 25 at 128 x 128 and 12 at 64 x 64. The 200k images of a full dataset are
thus 1.5-2.5 core-hours; ``--workers N`` spreads the ``imgs/<i>`` batches over N processes.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from lra.data.workers import progress_bar, worker_pool

# the release's difficulty folders by contour length (also used by lra.data.pathfinder)
DIFFICULTY_DIRS = {6: "curv_baseline", 9: "curv_contour_length_9", 14: "curv_contour_length_14"}


def difficulty_dir(contour_length: int, distractors: int | None = None) -> str:
    """The difficulty folder's name: the release's for LRA's geometry (``distractors`` None);
    with another number of distractor paths, the release's name and ``_distractors<N>``, so that
    such data never passes for the release's."""
    if contour_length not in DIFFICULTY_DIRS:
        raise ValueError(f"contour_length must be one of {sorted(DIFFICULTY_DIRS)}, "
                         f"got {contour_length}")
    if distractors is not None and distractors < 0:
        raise ValueError(f"distractors must be >= 0 (or None for LRA's), got {distractors}")
    base = DIFFICULTY_DIRS[contour_length]
    return base if distractors is None else f"{base}_distractors{distractors}"


@dataclass(frozen=True)
class PathfinderParams:
    """Geometry of one Pathfinder difficulty (lengths in pixels of the final image).

    The names follow the original generator's arguments: ``dash_length`` is its
    ``paddle_length``, ``thickness`` its ``paddle_thickness``, ``margins`` its
    ``paddle_margin_list`` (one drawn per image). See the module docstring for the rest.
    """

    size: int = 32
    contour_length: int = 14  # dashes per target path
    dash_length: float = 2.0
    thickness: float = 0.5
    margins: tuple[float, ...] = (1.0,)  # half the gap between consecutive dashes
    continuity: float = 1.0  # turns are limited to pi / (2 * continuity)
    marker_radius: float = 1.5
    seed_distance: float = 7.0  # between the starts of the two target paths
    padding: float = 1.0  # dashes stay this far inside the border
    distractor_length: int = 4
    n_distractors: int = 5
    contrast: float = 1.5  # stroke intensity (clipped to 1 after anti-aliasing)
    separation: float = 1.0  # min edge gap between paths, in units of 2 * margin
    n_turns: int = 16  # candidate turns tried per dash (jittered evenly over the range)
    max_pair_tries: int = 20  # fresh starts of the two target paths before a new margin
    max_distractor_tries: int = 4

    @classmethod
    def lra(cls, size: int = 32, contour_length: int = 14) -> PathfinderParams:
        """LRA's settings for ``size`` (32, 64 or 128) and contour length (6, 9 or 14)."""
        dl = max(1, contour_length // 3)
        if size == 32:
            geo = dict(dash_length=2.0, thickness=0.5, margins=(1.0,), marker_radius=1.5,
                       seed_distance=7.0, continuity=1.0, contrast=1.5, n_distractors=20 // dl)
        elif size == 64:
            geo = dict(dash_length=5.0, thickness=1.0, margins=(1.0,), marker_radius=2.5,
                       seed_distance=12.0, continuity=1.8, contrast=0.8, n_distractors=22 // dl)
        elif size == 128:
            geo = dict(dash_length=5.0, thickness=1.5, margins=(2.0, 3.0), marker_radius=3.0,
                       seed_distance=20.0, continuity=1.8, contrast=0.9, n_distractors=35 // dl)
        else:
            raise ValueError(f"size must be 32, 64 or 128, got {size}")
        return cls(size=size, contour_length=contour_length, distractor_length=dl, **geo)


@dataclass
class Scene:
    """A generated image before rendering: every dash, the markers and the label."""

    params: PathfinderParams
    margin: float
    segments: np.ndarray  # (N, 2, 2): dash n runs from segments[n, 0] to segments[n, 1], (x, y)
    path_ids: np.ndarray  # (N,): 0 and 1 are the target paths, 2.. the distractors
    markers: np.ndarray  # (2, 2): marker centres (x, y)
    label: int  # 1 when both markers sit on the same path
    marked_paths: tuple[int, int] = field(default=(0, 0))


def _point_seg(p: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance from points p to segments [a, b], broadcasting over leading axes."""
    ab = b - a
    denom = np.maximum((ab * ab).sum(-1), 1e-12)
    t = np.clip(((p - a) * ab).sum(-1) / denom, 0.0, 1.0)
    return np.linalg.norm(p - (a + t[..., None] * ab), axis=-1)


def _cross(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return u[..., 0] * v[..., 1] - u[..., 1] * v[..., 0]


def seg_seg_distance(p0, p1, q0, q1) -> np.ndarray:
    """Distance between segments [p0, p1] and [q0, q1] (0 when they cross), broadcasting."""
    d = np.minimum(np.minimum(_point_seg(p0, q0, q1), _point_seg(p1, q0, q1)),
                   np.minimum(_point_seg(q0, p0, p1), _point_seg(q1, p0, p1)))
    c1, c2 = _cross(q1 - q0, p0 - q0), _cross(q1 - q0, p1 - q0)
    c3, c4 = _cross(p1 - p0, q0 - p0), _cross(p1 - p0, q1 - p0)
    crossing = (c1 * c2 < 0) & (c3 * c4 < 0)
    return np.where(crossing, 0.0, d)


class _Canvas:
    """Dashes placed so far, with the clearance rules of the module docstring.

    Clearance is checked on an occupancy grid (128 cells a side): every dash stamps the cells
    whose centre lies within ``d_path`` plus one cell of its centre line, and a candidate dash
    is clear when the cells under points sampled along its centre line (two per cell) are
    stamped by no dash except the previous dash of its own path. (A point of the candidate is
    within 1/4 cell of a sample, which is within 0.71 cell of its cell's centre, so the one-cell
    slack makes the test conservative: accepted dashes really keep ``d_path``.) ``count`` holds how
    many zones cover a cell and ``idsum`` the sum of their dash indices, so a cell covered only
    by dash ``last`` has ``count == 1 and idsum == last``. A dash removed by backtracking is
    unstamped and marked dead.
    """

    GRID = 128

    def __init__(self, p: PathfinderParams, margin: float, rng: np.random.Generator):
        self.p, self.m, self.rng = p, margin, rng
        gap = p.separation * 2 * margin
        self.d_path = p.thickness + gap  # centre-line distance between different paths
        self.d_marker = p.marker_radius + p.thickness / 2 + gap  # dash to marker centre
        self.lo = p.padding + p.thickness / 2
        self.hi = p.size - p.padding - p.thickness / 2
        self.cell = p.size / self.GRID
        self.count = np.zeros(self.GRID * self.GRID, dtype=np.int32)
        self.idsum = np.zeros(self.GRID * self.GRID, dtype=np.int64)
        n_samples = math.ceil(2 * p.dash_length / self.cell) + 1
        self.t = np.linspace(0.0, 1.0, n_samples)[None, :]
        max_turn = math.pi / (2 * p.continuity)
        self.turn_step = 2 * max_turn / p.n_turns
        self.turn_base = -max_turn + self.turn_step * np.arange(p.n_turns)
        cap = 2 * p.contour_length + p.n_distractors * p.distractor_length + 16
        self.a, self.b = np.zeros((cap, 2)), np.zeros((cap, 2))
        self.owner = np.full(cap, -1, dtype=np.int64)
        self.alive = np.zeros(cap, dtype=bool)
        self.zones: dict[int, np.ndarray] = {}
        self.n = 0
        self.tips = np.zeros((0, 2))  # protected marker positions (target path ends)

    def _zone(self, a: np.ndarray, b: np.ndarray, radius: float) -> np.ndarray:
        """Flat indices of the grid cells whose centre lies within ``radius`` of segment a-b."""
        g, cell = self.GRID, self.cell
        (ax, ay), (bx, by) = a.tolist(), b.tolist()
        x0 = min(max(int((min(ax, bx) - radius) / cell), 0), g - 1)
        x1 = min(max(int((max(ax, bx) + radius) / cell) + 1, 0), g - 1)
        y0 = min(max(int((min(ay, by) - radius) / cell), 0), g - 1)
        y1 = min(max(int((max(ay, by) + radius) / cell) + 1, 0), g - 1)
        lo = (x0, y0)
        px = (np.arange(x0, x1 + 1) + 0.5) * cell - ax  # (W,)
        py = (np.arange(y0, y1 + 1) + 0.5) * cell - ay  # (H,)
        dx, dy = bx - ax, by - ay
        t = (py[:, None] * dy + px[None, :] * dx) / max(dx * dx + dy * dy, 1e-12)
        np.clip(t, 0.0, 1.0, out=t)
        ex, ey = px[None, :] - t * dx, py[:, None] - t * dy
        rows, cols = np.nonzero(ex * ex + ey * ey < radius * radius)
        return (rows + lo[1]) * g + (cols + lo[0])

    def _stamp(self, k: int, sign: int) -> None:
        if sign > 0:
            self.zones[k] = self._zone(self.a[k], self.b[k], self.d_path + self.cell)
        zone = self.zones[k]
        self.count[zone] += sign
        self.idsum[zone] += sign * k

    def attach_tip(self, k: int, tip: np.ndarray) -> None:
        """Widen dash k's zone by a marker zone around ``tip`` (the start of its path), so other
        paths keep clear of the future marker while they grow."""
        disk = self._zone(tip, tip, self.d_marker + self.cell)
        extra = np.setdiff1d(disk, self.zones[k], assume_unique=True)
        self.count[extra] += 1
        self.idsum[extra] += k
        self.zones[k] = np.concatenate([self.zones[k], extra])

    def protect_tips(self, tips: np.ndarray) -> None:
        """Forbid dashes within ``d_marker`` of the marker positions (for the distractors)."""
        self.tips = tips
        for tip in tips:
            zone = self._zone(tip, tip, self.d_marker + self.cell)
            self.count[zone] += 1
            self.idsum[zone] -= 1 << 40  # matches no dash index

    def _ok(self, ax: np.ndarray, ay: np.ndarray, bx: np.ndarray, by: np.ndarray,
            last: int) -> np.ndarray:
        """Which candidate dashes (K,) are inside and clear; ``last`` = previous dash index."""
        lo, hi = self.lo, self.hi
        ok = (ax >= lo) & (ax <= hi) & (ay >= lo) & (ay <= hi)
        ok &= (bx >= lo) & (bx <= hi) & (by >= lo) & (by <= hi)
        t, inv, g = self.t, 1.0 / self.cell, self.GRID
        ix = ((ax[:, None] + t * (bx - ax)[:, None]) * inv).astype(np.int64)
        iy = ((ay[:, None] + t * (by - ay)[:, None]) * inv).astype(np.int64)
        flat = iy * g + ix  # out-of-image candidates are already rejected: just clip
        cnt = self.count.take(flat, mode="clip")
        free = (cnt == 0) | ((cnt == 1) & (self.idsum.take(flat, mode="clip") == last))
        return ok & free.all(1)

    def add(self, a: np.ndarray, b: np.ndarray, path: int) -> int:
        if self.n == len(self.a):
            grow = len(self.a)
            self.a = np.concatenate([self.a, np.zeros((grow, 2))])
            self.b = np.concatenate([self.b, np.zeros((grow, 2))])
            self.owner = np.concatenate([self.owner, np.full(grow, -1, dtype=np.int64)])
            self.alive = np.concatenate([self.alive, np.zeros(grow, dtype=bool)])
        k = self.n
        self.a[k], self.b[k], self.owner[k], self.alive[k] = a, b, path, True
        self._stamp(k, +1)
        self.n += 1
        return k

    def kill(self, k: int) -> None:
        if self.alive[k]:
            self.alive[k] = False
            self._stamp(k, -1)

    def start(self, path: int, origin: np.ndarray | None = None, tries: int = 64,
              box: tuple[float, float] | None = None) -> tuple[int, float] | None:
        """Place a path's first dash (from ``origin``, or uniform in ``box``); None if stuck."""
        lo, hi = box or (self.lo, self.hi)
        if origin is None:
            a = self.rng.uniform(lo, hi, size=(tries, 2))
        else:
            a = np.repeat(origin[None], tries, axis=0)
        theta = self.rng.uniform(-math.pi, math.pi, size=tries)
        b = a + self.p.dash_length * np.stack([np.cos(theta), np.sin(theta)], -1)
        ok = np.flatnonzero(self._ok(a[:, 0], a[:, 1], b[:, 0], b[:, 1], -1))
        if not len(ok):
            return None
        k = ok[0]
        return self.add(a[k], b[k], path), float(theta[k])

    def extend(self, last: int, theta: float, path: int) -> tuple[int, float] | None:
        """Add the next dash after dash ``last`` (heading ``theta``); None if no turn fits."""
        p, m = self.p, self.m
        turns = self.turn_base + self.turn_step * self.rng.random(p.n_turns)
        weights = np.cos(p.continuity * turns) ** 2
        new = theta + turns
        cos, sin = np.cos(new), np.sin(new)
        px = self.b[last, 0] + m * math.cos(theta)  # the pivot between the two dashes
        py = self.b[last, 1] + m * math.sin(theta)
        ax, ay = px + m * cos, py + m * sin
        bx, by = ax + p.dash_length * cos, ay + p.dash_length * sin
        cdf = np.cumsum(weights * self._ok(ax, ay, bx, by, last))
        if cdf[-1] <= 0:
            return None
        k = min(int(np.searchsorted(cdf, self.rng.random() * cdf[-1], side="right")),
                p.n_turns - 1)
        return self.add(np.array([ax[k], ay[k]]), np.array([bx[k], by[k]]), path), float(new[k])

    def grow(self, paths: dict[int, list[tuple[int, float]]], ids: list[int], n_dashes: int,
             budget: int) -> bool:
        """Extend each path (a stack of (dash, heading)) to ``n_dashes``, one dash per path in
        turn. A path that is stuck backs up (1, 2, ... dashes) and regrows; at most ``budget``
        dead ends in all, else False."""
        stuck = dict.fromkeys(ids, 0)
        while any(len(paths[i]) < n_dashes for i in ids):
            for i in ids:
                if len(paths[i]) >= n_dashes:
                    continue
                head = self.extend(*paths[i][-1], i)
                if head is not None:
                    paths[i].append(head)
                    continue
                budget -= 1
                if budget < 0:
                    return False
                stuck[i] += 1
                for _ in range(min(stuck[i], len(paths[i]) - 1)):
                    self.kill(paths[i].pop()[0])
        return True

    def remove(self, path: int) -> None:
        for k in np.flatnonzero(self.alive[: self.n] & (self.owner[: self.n] == path)):
            self.kill(int(k))

    def dashes(self, path: int) -> np.ndarray:
        sel = self.alive[: self.n] & (self.owner[: self.n] == path)
        return np.flatnonzero(sel)


def _target_pair(c: _Canvas) -> np.ndarray | None:
    """Grow the two target paths; returns their (start, end) tips, shape (2, 2, 2), or None."""
    p = c.p
    lo, hi = c.lo + 2 * p.seed_distance, c.hi - 2 * p.seed_distance
    box = (lo, hi) if lo < hi else None
    first = c.start(0, box=box)
    if first is None:
        return None
    origin_a = c.a[first[0]]
    phi = c.rng.uniform(-math.pi, math.pi, size=32)
    origins_b = origin_a + p.seed_distance * np.stack([np.cos(phi), np.sin(phi)], -1)
    second = None
    for o in origins_b:
        second = c.start(1, origin=o, tries=8)
        if second is not None:
            break
    if second is None:
        return None
    c.attach_tip(first[0], c.a[first[0]])
    c.attach_tip(second[0], c.a[second[0]])
    paths = {0: [first], 1: [second]}
    for _ in range(4):
        if not c.grow(paths, [0, 1], p.contour_length, budget=4 * p.contour_length):
            return None
        tips = np.stack([np.stack([c.a[paths[i][0][0]], c.b[paths[i][-1][0]]]) for i in (0, 1)])
        if _tips_clear(c, tips):
            return tips
        for i in (0, 1):  # a far end came too close to the other path: regrow both ends
            for _ in range(min(3, len(paths[i]) - 1)):
                c.kill(paths[i].pop()[0])
    return None


def _tips_clear(c: _Canvas, tips: np.ndarray) -> bool:
    """Each tip (a marker position) keeps its clearance from the other target path and tips."""
    for i in (0, 1):
        other = c.dashes(1 - i)
        if (_point_seg(tips[i][:, None], c.a[other][None], c.b[other][None]) < c.d_marker).any():
            return False
        if (np.linalg.norm(tips[i][:, None] - tips[1 - i][None], axis=-1)
                < 2 * c.p.marker_radius + c.p.separation * 2 * c.m).any():
            return False
    return True


def sample_scene(rng: np.random.Generator, p: PathfinderParams, label: int | None = None) -> Scene:
    """Sample one Pathfinder image (label drawn at random unless given)."""
    label = int(rng.integers(0, 2)) if label is None else int(label)
    while True:
        margin = float(rng.choice(p.margins))
        tips = None
        for _ in range(p.max_pair_tries):
            c = _Canvas(p, margin, rng)
            tips = _target_pair(c)
            if tips is not None:
                break
        if tips is None:
            continue
        c.protect_tips(tips.reshape(-1, 2))
        for k in range(2, 2 + p.n_distractors):
            for _ in range(p.max_distractor_tries):
                head = c.start(k)
                if head is not None and c.grow({k: [head]}, [k], p.distractor_length,
                                               budget=p.distractor_length):
                    break
                c.remove(k)
        origin = int(rng.integers(0, 2))
        terminal = origin if label == 1 else 1 - origin
        markers = np.stack([tips[origin][0], tips[terminal][1]])
        live = np.flatnonzero(c.alive[: c.n])
        return Scene(p, margin, np.stack([c.a[live], c.b[live]], 1), c.owner[live].copy(),
                     markers, label, (origin, terminal))


def render(scene: Scene, scale: int = 1) -> np.ndarray:
    """The scene as a (size*scale)^2 float image in [0, 1] (scale > 1 for inspection/tests)."""
    p = scene.params
    n = p.size * scale
    img = np.zeros(n * n)
    half = p.thickness * scale / 2
    _stamp(img, n, scene.segments[:, 0] * scale, scene.segments[:, 1] * scale, half, p.contrast)
    centres = scene.markers * scale
    _stamp(img, n, centres, centres, p.marker_radius * scale, 1.0)
    return img.reshape(n, n)


def _stamp(img: np.ndarray, n: int, a: np.ndarray, b: np.ndarray, radius: float,
           intensity: float) -> None:
    """Max-composite anti-aliased capsules (segments a-b dilated by ``radius``) into ``img``."""
    if not len(a):
        return
    h = math.ceil(np.linalg.norm(b - a, axis=-1).max() / 2 + radius + 1.5)
    mid = np.floor((a + b) / 2).astype(np.int64)  # pixel holding the midpoint
    off = np.arange(-h, h + 1)
    cols = mid[:, 0, None, None] + off[None, None, :]  # (N, 1, W)
    rows = mid[:, 1, None, None] + off[None, :, None]  # (N, W, 1)
    cols, rows = np.broadcast_arrays(cols, rows)
    centres = np.stack([cols + 0.5, rows + 0.5], -1)  # pixel centres (x, y)
    d = _point_seg(centres, a[:, None, None], b[:, None, None])
    val = np.clip(radius + 0.5 - d, 0.0, 1.0) * intensity
    keep = (val > 0) & (cols >= 0) & (cols < n) & (rows >= 0) & (rows < n)
    np.maximum.at(img, rows[keep] * n + cols[keep], val[keep])


def to_uint8(img: np.ndarray) -> np.ndarray:
    return np.round(np.clip(img, 0.0, 1.0) * 255).astype(np.uint8)


def batch_scenes(p: PathfinderParams, seed: int, batch: int, count: int) -> Iterator[Scene]:
    """The scenes of ``imgs/<batch>/sample_{0..count-1}.png``, reproducibly."""
    rng = np.random.default_rng([seed, p.size, p.contour_length, batch])
    for _ in range(count):
        yield sample_scene(rng, p)


def _pathfinder_batch(args: tuple[str, PathfinderParams, int, int, int]) -> int:
    root, p, seed, batch, count = args
    from PIL import Image

    sub = f"imgs/{batch}"
    folder = Path(root) / sub
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for j, scene in enumerate(batch_scenes(p, seed, batch, count)):
        Image.fromarray(to_uint8(render(scene)), mode="L").save(folder / f"sample_{j}.png")
        rows.append(f"{sub} sample_{j}.png {j} {scene.label} {p.continuity} {p.contour_length} "
                    f"{p.distractor_length} {p.dash_length} {p.thickness} {scene.margin:g} 1\n")
    meta = Path(root) / "metadata" / f"{batch}.npy"
    meta.parent.mkdir(parents=True, exist_ok=True)
    tmp = meta.with_suffix(".tmp")
    tmp.write_text("".join(rows))
    tmp.replace(meta)  # written last: a batch with metadata is complete
    return count


def generate_pathfinder(out: str | Path, size: int = 32, contour_length: int = 14,
                        n_images: int = 200000, per_batch: int = 1000, seed: int = 0,
                        workers: int = 1, params: PathfinderParams | None = None,
                        progress: bool = True, distractors: int | None = None) -> Path:
    """Write ``out/pathfinder<size>/<difficulty>/{imgs,metadata}``; returns that folder.

    ``distractors`` replaces LRA's number of distractor paths per image (an easier or harder
    task than the release's) and names the folder accordingly (:func:`difficulty_dir`)."""
    p = params or PathfinderParams.lra(size, contour_length)
    if distractors is not None:
        p = replace(p, n_distractors=distractors)
    root = Path(out) / f"pathfinder{p.size}" / difficulty_dir(p.contour_length, distractors)
    jobs = [(str(root), p, seed, b, min(per_batch, n_images - b * per_batch))
            for b in range(math.ceil(n_images / per_batch))]
    with (progress_bar(progress, f"Pathfinder-{p.size}", n_images) as bar,
          worker_pool(workers) as pool):
        done = pool.imap_unordered(_pathfinder_batch, jobs) if pool else map(_pathfinder_batch,
                                                                                jobs)
        for count in done:
            bar.advance(count)
    return root


def plot_examples(path: str | Path, sizes: tuple[int, ...] = (32, 128), per_label: int = 3,
                  seed: int = 0) -> None:
    """Save a labelled grid of generated positives and negatives (docs/pathfinder_examples.png)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(seed)
    fig, axes = plt.subplots(len(sizes), 2 * per_label, figsize=(2 * per_label * 1.6,
                                                                 len(sizes) * 1.9))
    axes = np.atleast_2d(axes)
    for r, size in enumerate(sizes):
        p = PathfinderParams.lra(size)
        for k in range(2 * per_label):
            label = 1 if k < per_label else 0
            ax = axes[r, k]
            ax.imshow(to_uint8(render(sample_scene(rng, p, label))), cmap="gray", vmin=0,
                      vmax=255, interpolation="nearest")
            ax.set_title(f"{size}px: {'connected' if label else 'not connected'}",
                         fontsize=7, color="tab:green" if label else "tab:red")
            ax.axis("off")
    fig.suptitle("Generated Pathfinder (contour length 14): label 1 = markers on one path",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

