"""Scenes of the synthetic dataset: what moves where (pure planning from a random
generator) and how it looks (vectorised numpy rendering). No I/O.

A scene is a textured background that pans slowly plus 1-3 look-alike "tokens" (a disc
with a stripe) that glide over the frame, which is a torus: what leaves on the right
comes back on the left. All tokens are drawn from the same palette and sizes, so the
actor cannot be told from a distractor by its looks.

Actions are defined by the direction of time, nothing else:
- class c: the actor glides steadily along heading `class_heading(c, K)`; the K class
  headings are spread over half a turn (0 = right, then counter-clockwise).
- outside its actions the actor, and every moving distractor, glides at the same speed
  along the *reverse* of a class heading (another random one every 1.5-5 s). Each
  look-alike is an action played backwards; some distractors rest.
So a frame, and the set of frames of a snippet, looks the same inside and outside an
action (same token, same speed, same kind of path): a feature that averages frames
without an order, such as a frozen random encoder's, carries little to tell them apart,
while an encoder trained through the temporal shift learns which way things move.

Speeds stay below half a frame width per second, so frames sampled up to 1 s apart (the
trainer's stride of 8 frames at 8 fps) still show the direction without wrap-around
aliasing. Units: positions in frame widths on the unit torus, speeds in widths per
second, angles in radians; `render` maps them to pixels for any frame size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# Saturated token colours (RGB in [0, 1]); backgrounds are desaturated.
PALETTE = np.array([
    [0.90, 0.20, 0.20], [0.20, 0.75, 0.25], [0.25, 0.40, 0.95], [0.95, 0.85, 0.20],
    [0.85, 0.30, 0.85], [0.20, 0.85, 0.85], [0.95, 0.55, 0.15], [0.60, 0.35, 0.90],
], dtype=np.float32)
STRIPES = np.array([[0.97, 0.97, 0.97], [0.08, 0.08, 0.08]], dtype=np.float32)

SPEED_RANGE = (0.15, 0.25)  # widths / s: < 0.5 width per second, so a 1 s gap never aliases
HEADING_WOBBLE = math.radians(4.0)  # per-frame noise of an action's heading, and per bout
BOUT_SECONDS = (1.5, 5.0)  # how long a look-alike glides before it picks another heading
RESTING = 0.25  # probability that a distractor rests (moves at a tenth of the speed)
RADIUS_RANGE = (0.09, 0.12)  # token radius, widths
DISTRACTORS = (0, 2)  # fewest and most look-alike tokens besides the actor
PAN_SPEED_RANGE = (0.015, 0.04)  # background pan, widths / s
CHUNK_FRAMES = 64  # frames rendered at once (bounds memory at large sizes)


def class_heading(index: int, classes: int) -> float:
    """Heading of class `index`: `classes` headings evenly spaced over half a turn,
    radians (0 = right, pi/2 = up); the other half turn is for look-alikes."""
    return math.pi * index / classes


@dataclass(frozen=True)
class Token:
    xy: np.ndarray  # (N, 2) centre per frame, widths, in [0, 1)
    angle: np.ndarray  # (N,) stripe orientation, radians
    radius: float  # widths
    body: np.ndarray  # (3,) RGB
    stripe: np.ndarray  # (3,) RGB


@dataclass(frozen=True)
class Background:
    freqs: np.ndarray  # (G, 2) integer cycles per width (periodic on the torus)
    amps: np.ndarray  # (G,) luminance amplitude of each grating
    phases: np.ndarray  # (G,) radians
    pan: np.ndarray  # (N, 2) offset of the texture per frame, widths
    base: np.ndarray  # (3,) mean RGB
    tint: np.ndarray  # (3,) RGB direction the luminance modulates along
    flicker: np.ndarray  # (N,) global brightness factor


@dataclass(frozen=True)
class Scene:
    frames: int
    background: Background
    tokens: tuple[Token, ...]  # drawn in this order (the actor is not always last)
    actor: int  # index into `tokens` of the token that performs the actions


def plan_scene(
    rng: np.random.Generator, frames: int, fps: float, action: np.ndarray,
    class_index: int, classes: int,
) -> Scene:
    """A scene of `frames` frames whose actor performs class `class_index` on the frames
    where `action` (N,) bool is True and plays look-alikes elsewhere."""
    heading = class_heading(class_index, classes)
    actor = _token(rng, _path(rng, frames, fps, classes, action, heading))
    distractors = []
    for _ in range(int(rng.integers(DISTRACTORS[0], DISTRACTORS[1] + 1))):
        never = np.zeros(frames, dtype=bool)
        resting = bool(rng.random() < RESTING)
        distractors.append(_token(rng, _path(rng, frames, fps, classes, never, heading, resting)))
    tokens = [actor, *distractors]
    order = rng.permutation(len(tokens))
    return Scene(frames, _background(rng, frames, fps), tuple(tokens[i] for i in order),
                 actor=int(np.argmin(order)))


def _token(rng: np.random.Generator, path: tuple[np.ndarray, np.ndarray]) -> Token:
    xy, angle = path
    return Token(xy, angle, float(rng.uniform(*RADIUS_RANGE)),
                 PALETTE[rng.integers(len(PALETTE))], STRIPES[rng.integers(len(STRIPES))])


def _path(
    rng: np.random.Generator, frames: int, fps: float, classes: int, action: np.ndarray,
    heading: float, resting: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Centre (N, 2) and stripe angle (N,) of a token: look-alike bouts everywhere,
    steady motion along `heading` on every step t -> t+1 with both frames in `action`."""
    step = rng.uniform(*SPEED_RANGE) / fps * (0.1 if resting else 1.0)  # widths per frame
    directions = _lookalike_headings(rng, frames - 1, fps, classes)  # (N-1,) per step
    moving = action[:-1] & action[1:]
    directions[moving] = heading + rng.normal(0.0, HEADING_WOBBLE, int(moving.sum()))
    velocity = step * np.stack([np.cos(directions), -np.sin(directions)], axis=1)  # y down
    start = rng.random(2)
    xy = np.concatenate([start[None], start + np.cumsum(velocity, axis=0)]) % 1.0  # (N, 2)
    spin = rng.uniform(-1.0, 1.0) * math.pi / fps  # stripe turns steadily, either way
    angle = rng.uniform(0, math.pi) + spin * np.arange(frames)
    return xy.astype(np.float32), angle.astype(np.float32)


def _lookalike_headings(rng: np.random.Generator, steps: int, fps: float, classes: int) -> np.ndarray:
    """(steps,) headings: bouts of BOUT_SECONDS along the reverse of a random class."""
    out = np.empty(steps)
    start = 0
    while start < steps:
        length = max(1, int(round(rng.uniform(*BOUT_SECONDS) * fps)))
        reverse = class_heading(int(rng.integers(classes)), classes) + math.pi
        out[start:start + length] = reverse + rng.normal(0.0, HEADING_WOBBLE)
        start += length
    return out


def _background(rng: np.random.Generator, frames: int, fps: float) -> Background:
    gratings = int(rng.integers(3, 6))
    freqs = rng.integers(-4, 5, size=(gratings, 2))
    freqs[(freqs == 0).all(axis=1)] = (1, 2)
    amps = rng.uniform(0.04, 0.1, gratings) / math.sqrt(gratings / 3)
    heading = rng.uniform(0, 2 * math.pi) + np.cumsum(rng.normal(0, 0.35 / math.sqrt(fps), frames))
    speed = rng.uniform(*PAN_SPEED_RANGE) / fps
    pan = np.cumsum(speed * np.stack([np.cos(heading), np.sin(heading)], axis=1), axis=0)
    grey = rng.uniform(0.3, 0.55)
    base = np.clip(grey + rng.normal(0, 0.05, 3), 0.1, 0.9)
    tint = 0.6 + 0.4 * rng.random(3)
    flicker = 1.0 + 0.06 * np.sin(2 * math.pi * (np.arange(frames) / fps / rng.uniform(6, 15))
                                  + rng.uniform(0, 2 * math.pi))
    return Background(freqs, amps.astype(np.float32), rng.uniform(0, 2 * math.pi, gratings),
                      pan, base.astype(np.float32), tint.astype(np.float32),
                      flicker.astype(np.float32))


def render(scene: Scene, size: int) -> np.ndarray:
    """The frames of `scene` at `size` x `size` pixels, (N, size, size, 3) uint8 RGB."""
    out = np.empty((scene.frames, size, size, 3), dtype=np.uint8)
    for start in range(0, scene.frames, CHUNK_FRAMES):
        stop = min(scene.frames, start + CHUNK_FRAMES)
        image = _render_background(scene.background, size, start, stop)
        for token in scene.tokens:
            _draw_token(image, token, size, start, stop)
        out[start:stop] = np.clip(image * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return out


def _grid(size: int) -> np.ndarray:
    return ((np.arange(size) + 0.5) / size).astype(np.float32)  # (S,) pixel centres, widths


def _render_background(bg: Background, size: int, start: int, stop: int) -> np.ndarray:
    """(n, S, S, 3) float32. A sum of gratings shifted by the pan offset:
    cos(2 pi f.(g - o_t) + phi) = cos(2 pi f.g) cos(b_t) + sin(2 pi f.g) sin(b_t),
    with b_t = 2 pi f.o_t - phi, so all frames are one matrix product."""
    g = _grid(size)
    gy, gx = np.meshgrid(g, g, indexing="ij")  # (S, S)
    spatial = 2 * np.pi * (bg.freqs[:, 0, None, None] * gx + bg.freqs[:, 1, None, None] * gy)
    basis = np.concatenate([np.cos(spatial), np.sin(spatial)]).reshape(2 * len(bg.amps), -1)
    b = 2 * np.pi * bg.pan[start:stop] @ bg.freqs.T.astype(np.float64) - bg.phases  # (n, G)
    weights = np.concatenate([np.cos(b) * bg.amps, np.sin(b) * bg.amps], axis=1)  # (n, 2G)
    lum = (weights.astype(np.float32) @ basis.astype(np.float32)).reshape(-1, size, size)
    image = bg.base + lum[..., None] * bg.tint  # (n, S, S, 3)
    return image * bg.flicker[start:stop, None, None, None]


def _draw_token(image: np.ndarray, token: Token, size: int, start: int, stop: int) -> None:
    """Composite one token into `image` (n, S, S, 3) in place, anti-aliased over one
    pixel. Only a P x P patch around the centre is computed; its pixel indices wrap
    around the frame (the torus)."""
    patch = int(math.ceil(2 * token.radius * size)) + 2  # P, <= S for radius < 0.5
    x, y = token.xy[start:stop, 0], token.xy[start:stop, 1]  # (n,) widths
    offsets = np.arange(patch) - patch // 2  # (P,)
    cols = np.floor(x * size).astype(np.int64)[:, None] + offsets  # (n, P) unwrapped
    rows = np.floor(y * size).astype(np.int64)[:, None] + offsets  # (n, P)
    dx = (cols + 0.5) / size - x[:, None]  # (n, P) widths from the centre
    dy = (rows + 0.5) / size - y[:, None]  # (n, P)
    dist = np.sqrt(dy[:, :, None] ** 2 + dx[:, None, :] ** 2)  # (n, P, P)
    body = np.clip((token.radius - dist) * size + 0.5, 0.0, 1.0)[..., None]
    cos, sin = np.cos(token.angle[start:stop]), np.sin(token.angle[start:stop])
    across = dy[:, :, None] * cos[:, None, None] - dx[:, None, :] * sin[:, None, None]
    stripe = np.clip((0.35 * token.radius - np.abs(across)) * size + 0.5, 0.0, 1.0)[..., None]
    index = (np.arange(len(x))[:, None, None], rows[:, :, None] % size, cols[:, None, :] % size)
    region = image[index]  # (n, P, P, 3)
    region *= 1.0 - body
    region += body * (token.body * (1.0 - stripe) + token.stripe * stripe)
    image[index] = region
