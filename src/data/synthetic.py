"""Synthetic COCO-format instance-segmentation data: coloured shapes on textured backgrounds.

The project's demo data set. Each image holds 1-6 shapes (circle, square, triangle, ellipse,
star, ring) from 20 px to most of the image, drawn in random order so later shapes occlude
earlier ones (clipping by the image border and occlusion together hide at most 30% of any
shape); ~10% of images also hold a crowd (a cluster of small same-class shapes, one
``iscrowd=1`` annotation). Classes differ by outline, not colour, so a detector must learn shape.

Output layout (COCO 2017 style)::

    DIR/train/000001.jpg ...             JPEG quality 95, width/height 0.75-1.25 x image_size
    DIR/val/000001.jpg ...
    DIR/annotations/instances_train.json
    DIR/annotations/instances_val.json

Annotations: ``bbox`` is ``[x, y, w, h]`` in pixels and ``area`` a pixel count, both taken from
pycocotools (``toBbox`` / ``area``) of the encoded visible mask, so they agree with
``COCO.annToMask``. A visible mask is the shape minus every shape drawn above it. Hole-free masks
are polygons (all parts kept, traced so pycocotools decodes them pixel-exactly) except a random
share stored as uncompressed RLE; masks with holes (rings, shapes with a small one on top) and
crowds are always uncompressed RLE. Category ids are 1, 3, ..., 11 (non-contiguous on purpose).

Every image draws from its own generator seeded by ``(seed, split, index)``: the output is
byte-for-byte reproducible, and changing ``num_train`` leaves existing images unchanged.

Command line: ``python tools/make_synthetic.py --out DIR`` (``--help`` lists the options).
"""
import glob
import json
import os

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from src.data.classes import SHAPE_CLASSES

# Written to the annotations' info; bump it whenever a change alters what a seed draws, so that
# ``--keep_current`` regenerates data sets written by an older generator.
DATA_VERSION = "2.0"
CATEGORY_IDS = tuple(2 * i + 1 for i in range(len(SHAPE_CLASSES)))  # 1, 3, 5, ...
SPLITS = ("train", "val")
# Defaults of the command line and of generate_dataset: the demo's data set.
NUM_TRAIN = 1600
NUM_VAL = 200
IMAGE_SIZE = 160

MAX_OBJECTS = 6
MIN_SHAPE_PX = 20.0            # smallest shape extent (diameter of its bounding circle)
MAX_SHAPE_FRACTION = 0.8       # largest extent, as a fraction of the shorter image side
SIZE_SKEW = 0.6                # < 1 favours larger shapes on the log-size scale
# A placement is rejected if it leaves any shape less visible than this. With 40% (data version
# 1.0) a shape could lose most of its outline, which alone tells the classes apart: the demo
# model found 42% of the val shapes under 60% visible and 61% of those at 60-80%, against
# 90% of the rest.
MIN_VISIBLE_FRACTION = 0.7
MIN_VISIBLE_PX = 16            # annotations with fewer visible pixels are dropped
PLACEMENT_TRIES = 20
RLE_FRACTION = 0.1             # share of hole-free masks stored as RLE instead of polygons
CROWD_FRACTION = 0.1           # share of images with one crowd cluster
MIN_COLOUR_DISTANCE = 90.0     # BGR distance sought between a shape and what lies beneath
# Quality 95 without chroma subsampling keeps small shapes' edges and colours crisp.
JPEG_PARAMS = (cv2.IMWRITE_JPEG_QUALITY, 95,
               cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444)
_SUBPIXEL_SHIFT = 4            # cv2.fillPoly fixed-point bits: vertices at 1/16 px


def _regular_polygon(radius, count, angle, centre):
    """``count`` vertices on a circle: [count, 2] float64 (x, y), pixels."""
    theta = angle + np.arange(count) * (2.0 * np.pi / count)
    return np.stack([centre[0] + radius * np.cos(theta), centre[1] + radius * np.sin(theta)], 1)


def _shape_outline(name, centre, extent, angle, rng):
    """Outline of one shape whose bounding circle has diameter ``extent``.

    Returns (outer, hole): [N, 2] float64 (x, y) pixel vertices; hole is None except for rings.
    """
    radius = extent / 2.0
    if name == "circle":
        return _regular_polygon(radius, 64, angle, centre), None
    if name == "square":
        return _regular_polygon(radius, 4, angle, centre), None
    if name == "triangle":
        return _regular_polygon(radius, 3, angle, centre), None
    if name == "ellipse":
        # Minor/major <= 0.6 keeps ellipses clearly apart from circles.
        unit = _regular_polygon(1.0, 64, 0.0, (0.0, 0.0)) * [radius, radius * rng.uniform(0.4, 0.6)]
        rotation = np.array([[np.cos(angle), np.sin(angle)], [-np.sin(angle), np.cos(angle)]])
        return unit @ rotation + centre, None
    if name == "star":
        tips = _regular_polygon(radius, 5, angle, centre)
        notches = _regular_polygon(radius * rng.uniform(0.38, 0.5), 5, angle + np.pi / 5, centre)
        return np.stack([tips, notches], 1).reshape(-1, 2), None
    if name == "ring":
        return (_regular_polygon(radius, 64, angle, centre),
                _regular_polygon(radius * rng.uniform(0.45, 0.6), 64, angle, centre))
    raise ValueError(f"unknown shape {name!r}")


def _rasterise(outer, hole, height, width):
    """Filled outline as an [H, W] bool mask, and the shape's full (unclipped) area in px²."""
    mask = np.zeros((height, width), np.uint8)
    scale = 1 << _SUBPIXEL_SHIFT
    cv2.fillPoly(mask, [np.round(outer * scale).astype(np.int32)], 1, shift=_SUBPIXEL_SHIFT)
    area = cv2.contourArea(outer.astype(np.float32))
    if hole is not None:
        cv2.fillPoly(mask, [np.round(hole * scale).astype(np.int32)], 0, shift=_SUBPIXEL_SHIFT)
        area -= cv2.contourArea(hole.astype(np.float32))
    return mask.astype(bool), area


def _background(rng, height, width):
    """Textured background: [H, W, 3] float32 BGR 0-255 (gradient, stripes, blobs, noise)."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    start = rng.uniform(0, 255, 3)
    end = np.clip(start + rng.normal(0, 45, 3), 0, 255)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = xx * np.cos(angle) + yy * np.sin(angle)
    ramp = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1.0)
    image = start + (end - start) * ramp[..., None]
    if rng.random() < 0.5:
        angle = rng.uniform(0, np.pi)
        phase = (xx * np.cos(angle) + yy * np.sin(angle)) * (2 * np.pi / rng.uniform(6, 30))
        wave = np.sin(phase) if rng.random() < 0.5 else np.sign(np.sin(phase))
        image += rng.uniform(8, 30) * wave[..., None] * rng.uniform(0.3, 1.0, 3)
    if rng.random() < 0.5:
        grid = rng.normal(0, rng.uniform(10, 25), (rng.integers(3, 8), rng.integers(3, 8), 3))
        image += cv2.resize(grid.astype(np.float32), (width, height), interpolation=cv2.INTER_CUBIC)
    image += rng.normal(0, rng.uniform(2, 10), image.shape)
    return image.astype(np.float32)


def _sample_mask(rng, name, is_crowd, height, width):
    """One random placement: [H, W] bool mask and the full (unclipped) area in px².

    A crowd is a cluster of 5-10 small shapes; its area is that of their in-image union.
    """
    if is_crowd:
        spread = max(rng.uniform(0.1, 0.2) * min(height, width), 12.0)
        centre = rng.uniform([spread, spread], [width - spread, height - spread])
        mask = np.zeros((height, width), bool)
        for _ in range(rng.integers(5, 11)):
            outline = _shape_outline(name, centre + rng.normal(0, spread / 2, 2),
                                     rng.uniform(6, 11), rng.uniform(0, 2 * np.pi), rng)
            mask |= _rasterise(*outline, height, width)[0]
        return mask, float(mask.sum())
    # Log-uniform extent, skewed towards large shapes (mostly learnable at 160 px).
    extent = MIN_SHAPE_PX * (MAX_SHAPE_FRACTION * min(height, width) / MIN_SHAPE_PX) ** (
        rng.random() ** SIZE_SKEW)
    margin = np.minimum(0.35 * extent, [width / 2.0, height / 2.0])
    centre = rng.uniform(margin, [width - margin[0], height - margin[1]])
    outline = _shape_outline(name, centre, extent, rng.uniform(0, 2 * np.pi), rng)
    return _rasterise(*outline, height, width)


def _place(rng, name, is_crowd, owner, full_areas):
    """Sample a placement that keeps every shape (the new one too) visible enough.

    owner: [H, W] int, index of the topmost shape per pixel (-1 background); full_areas: the
    full area of each placed shape. Returns (mask, full area) or None after PLACEMENT_TRIES.
    """
    height, width = owner.shape
    for _ in range(PLACEMENT_TRIES):
        mask, area = _sample_mask(rng, name, is_crowd, height, width)
        if area <= 0 or mask.sum() < MIN_VISIBLE_FRACTION * area:
            continue
        left = np.bincount(owner[~mask & (owner >= 0)], minlength=len(full_areas))
        if np.all(left >= MIN_VISIBLE_FRACTION * np.asarray(full_areas)):
            return mask, area
    return None


def _pick_colour(rng, canvas, mask, beneath_colours):
    """A BGR colour far from the canvas under ``mask`` and from the shapes it overlaps."""
    references = [canvas[mask].mean(0)] + beneath_colours
    best, best_distance = None, -1.0
    for _ in range(24):
        colour = rng.uniform(0, 255, 3)
        distance = min(np.linalg.norm(colour - ref) for ref in references)
        if distance > best_distance:
            best, best_distance = colour, distance
        if distance >= MIN_COLOUR_DISTANCE:
            break
    return best


def _paint(rng, canvas, mask, colour):
    """Fill ``mask`` with ``colour`` plus a soft linear shading and mild noise (in place)."""
    ys, xs = np.nonzero(mask)
    angle = rng.uniform(0, 2 * np.pi)
    along = (xs - xs.mean()) * np.cos(angle) + (ys - ys.mean()) * np.sin(angle)
    shading = rng.uniform(0, 20) * along / max(float(np.abs(along).max()), 1.0)
    canvas[ys, xs] = colour + shading[:, None] + rng.normal(0, 3, (len(ys), 3))


def image_rng(seed, split, index):
    """The generator that draws image ``index`` (0-based) of ``split`` ("train" / "val")."""
    return np.random.default_rng([seed, SPLITS.index(split), index])


def render_image(rng, image_size):
    """One synthetic image and its shapes.

    Returns (image, shapes): image [H, W, 3] uint8 BGR with H, W in 0.75-1.25 x image_size;
    shapes, bottom to top, are dicts with ``category_id``, ``iscrowd`` (0/1), ``colour`` (BGR
    float64 [3]), ``full_area`` (px², the whole shape, before clipping and occlusion) and
    ``visible`` ([H, W] bool, the shape minus everything drawn above it).
    """
    width, height = (int(round(s * image_size)) for s in rng.uniform(0.75, 1.25, 2))
    canvas = _background(rng, height, width)
    plan = [(int(label), False) for label in
            rng.integers(0, len(SHAPE_CLASSES), rng.integers(1, MAX_OBJECTS + 1))]
    if rng.random() < CROWD_FRACTION:
        plan.insert(int(rng.integers(0, len(plan) + 1)),
                    (int(rng.integers(0, len(SHAPE_CLASSES))), True))
    owner = np.full((height, width), -1, np.int64)
    shapes = []
    for label, is_crowd in plan:
        placement = _place(rng, SHAPE_CLASSES[label], is_crowd, owner,
                           [s["full_area"] for s in shapes])
        if placement is None:
            continue
        mask, area = placement
        beneath = [s["colour"] for i, s in enumerate(shapes) if np.any(mask & (owner == i))]
        colour = _pick_colour(rng, canvas, mask, beneath)
        _paint(rng, canvas, mask, colour)
        owner[mask] = len(shapes)
        shapes.append({"category_id": CATEGORY_IDS[label], "iscrowd": int(is_crowd),
                       "colour": colour, "full_area": area})
    for index, shape in enumerate(shapes):
        shape["visible"] = owner == index
    return np.clip(np.round(canvas), 0, 255).astype(np.uint8), shapes


def uncompressed_rle(mask):
    """[H, W] bool mask → COCO uncompressed RLE: column-major run lengths, zeros first."""
    flat = mask.ravel(order="F").astype(np.int8)
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        counts = [0] + counts
    return {"counts": counts, "size": [int(mask.shape[0]), int(mask.shape[1])]}


def mask_to_polygons(mask):
    """Hole-free [H, W] bool mask → COCO polygons that pycocotools decodes to exactly ``mask``.

    Contours are traced on the mask upsampled 2x, so each vertex sits a quarter pixel inside the
    pixel boundary; tracing pixel centres instead loses about half of the boundary pixels.
    Returns a list of [x1, y1, x2, y2, ...] (one per connected part, all kept), or None if the
    mask has a hole (polygons cannot represent one).
    """
    doubled = np.repeat(np.repeat(mask.astype(np.uint8), 2, 0), 2, 1)
    contours, hierarchy = cv2.findContours(doubled, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    if hierarchy is None or np.any(hierarchy[0][:, 3] >= 0):
        return None
    return [((c.reshape(-1, 2) + 0.5) / 2.0).ravel().tolist() for c in contours]


def _annotation(rng, shape, height, width):
    """COCO annotation fields for one shape (no ids), or None if too little of it shows."""
    if shape["visible"].sum() < MIN_VISIBLE_PX:
        return None
    polygons = None
    if not shape["iscrowd"] and rng.random() >= RLE_FRACTION:
        polygons = mask_to_polygons(shape["visible"])
    if polygons is None:
        segmentation = uncompressed_rle(shape["visible"])
        rle = mask_utils.frPyObjects(segmentation, height, width)
    else:
        segmentation = polygons
        rle = mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
    return {"category_id": shape["category_id"],
            "bbox": [float(v) for v in mask_utils.toBbox(rle)],
            "area": float(mask_utils.area(rle)),
            "iscrowd": shape["iscrowd"], "segmentation": segmentation}


def _write_split(out_dir, split, num_images, image_size, seed):
    """Render one split's images to ``out_dir/split`` and return its COCO dict."""
    images, annotations = [], []
    for index in range(num_images):
        rng = image_rng(seed, split, index)
        image, shapes = render_image(rng, image_size)
        image_id = index + 1
        file_name = f"{image_id:06d}.jpg"
        path = os.path.join(out_dir, split, file_name)
        if not cv2.imwrite(path, image, JPEG_PARAMS):
            raise OSError(f"could not write image {path}")
        height, width = image.shape[:2]
        images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
        for shape in shapes:
            fields = _annotation(rng, shape, height, width)
            if fields is not None:
                annotations.append({"id": len(annotations) + 1, "image_id": image_id, **fields})
    categories = [{"id": cid, "name": name, "supercategory": "shape"}
                  for cid, name in zip(CATEGORY_IDS, SHAPE_CLASSES)]
    info = {"description": "synthetic shapes (src/data/synthetic.py)", "version": DATA_VERSION,
            "seed": seed, "split": split, "image_size": image_size}
    return {"info": info, "licenses": [], "images": images, "annotations": annotations,
            "categories": categories}


def _annotation_path(out_dir, split):
    return os.path.join(out_dir, "annotations", f"instances_{split}.json")


def _prepare_output_dir(out_dir, overwrite):
    """Create the output folders; refuse a non-empty ``out_dir`` unless ``overwrite``.

    With ``overwrite`` only files this module writes are removed (``*.jpg`` in train/ and val/,
    the two annotation files); anything else in ``out_dir`` stays.
    """
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise NotADirectoryError(f"output path {out_dir} exists and is not a directory")
    if os.path.isdir(out_dir) and os.listdir(out_dir) and not overwrite:
        raise FileExistsError(f"output directory {out_dir} is not empty (use --overwrite)")
    try:
        for sub in SPLITS + ("annotations",):
            os.makedirs(os.path.join(out_dir, sub), exist_ok=True)
        for split in SPLITS:
            stale = glob.glob(os.path.join(out_dir, split, "*.jpg"))
            stale.append(_annotation_path(out_dir, split))
            for path in stale:
                if os.path.exists(path):
                    os.remove(path)
    except OSError as error:
        raise OSError(f"cannot write to output directory {out_dir}: {error}") from error


def is_current(out_dir, num_train, num_val, image_size, seed):
    """True if ``out_dir`` holds the data set ``generate_dataset`` would write with these
    arguments: both annotation files readable, written by this ``DATA_VERSION`` with the same
    seed, image size and image counts (the images themselves are not checked)."""
    for split, count in zip(SPLITS, (num_train, num_val)):
        try:
            with open(_annotation_path(out_dir, split)) as handle:
                dataset = json.load(handle)
            info = dataset["info"]
            written = (info["version"], info["seed"], info["image_size"], len(dataset["images"]))
        except (OSError, ValueError, KeyError, TypeError):
            return False
        if written != (DATA_VERSION, seed, image_size, count):
            return False
    return True


def generate_dataset(out_dir, num_train=NUM_TRAIN, num_val=NUM_VAL, image_size=IMAGE_SIZE,
                     seed=0, overwrite=False):
    """Write the synthetic data set (layout in the module docstring).

    Returns a dict of paths: ``train_images`` / ``val_images`` (folders of JPEGs) and
    ``train_annotations`` / ``val_annotations`` (COCO json files).
    """
    if num_train < 0 or num_val < 0:
        raise ValueError(f"image counts must be >= 0, got {num_train} and {num_val}")
    if image_size < 32:
        raise ValueError(f"image_size must be >= 32 px, got {image_size}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    _prepare_output_dir(out_dir, overwrite)
    paths = {}
    for split, count in zip(SPLITS, (num_train, num_val)):
        dataset = _write_split(out_dir, split, count, image_size, seed)
        json_path = _annotation_path(out_dir, split)
        with open(json_path, "w") as handle:
            json.dump(dataset, handle)
        paths[f"{split}_images"] = os.path.join(out_dir, split)
        paths[f"{split}_annotations"] = json_path
    return paths
