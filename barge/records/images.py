"""Images as records: which objects are images, the listing a prefix of them is planned from,
where a record's image comes from (an ``s3://`` URI, base64 data, Parquet bytes), and decoding
one image within bounds.

A prefix of image objects is planned as a JSONL *listing* written under the job's output
(``_inputs/images-<run>.jsonl``, one ``{"id": <key relative to the prefix>, "image": <uri>,
"etag": <its ETag as listed>}`` line per image, in key order), so its shards are byte ranges of that listing like any JSONL
input and a shard reads exactly the images planned for it, whatever is added to the prefix
later. The shards record the listing's ETag and size as its PUT wrote them, and every read of
it is conditional on that ETag: a listing edited after planning (it lies under the output,
where the tenant can write) fails the shard (``ListingChanged``, ``packs.listing_records``).
Each image's GET is conditional on the ETag its line names: an image overwritten after planning
is that record's error, naming it and both ETags, never an image the job did not plan.

Decoding refuses, as a per-record ``ImageError`` with the reason: zero bytes, bytes Pillow
cannot identify, an image over ``max_pixels`` (a decompression bomb: refused from its header,
before any pixel is decoded), truncated or corrupt data. It applies the EXIF orientation and
keeps the first frame of an animated image.

PIL is imported on use (the API imports this package and never decodes an image).
"""

from __future__ import annotations

import base64
import binascii
import functools
import io
import json
import os
import uuid
import warnings
from dataclasses import dataclass
from typing import Any

from barge.errors import InvalidSpec, NotFound, ObjectChanged, etags_then_now
from barge.records.base import is_data_object
from barge.storage import ObjectInfo, ObjectStore, S3Uri
from barge.uris import normalise

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")
LISTING_DIR = "_inputs/"
LISTING_IMAGE_FIELD = "image"  # the listing's fields: the image's URI and its id
LISTING_ID_FIELD = "id"
LISTING_ETAG_FIELD = "etag"  # the image's ETag as planning listed it ("" in older listings)
# What decoding one image and preparing it for a model holds at its peak, per pixel: 4 bytes for
# the decoded RGB image (8 while a mode conversion runs), 10 more while transformers' image
# processor makes its NumPy and PIL copies before resizing (measured: 14), with a margin.
DECODE_BYTES_PER_PIXEL = 16
PIXEL_BLOCK_BYTES = 64 * 2**20  # Pillow's allocation blocks for large images (see below)


class ImageError(Exception):
    """One record's image cannot be used; the message says why (a per-record error)."""

    def __init__(self, message: str):
        self.message = message
        super().__init__(message)


def is_image_key(key: str) -> bool:
    return is_data_object(key) and key.lower().endswith(IMAGE_SUFFIXES)


def list_images(
    store: ObjectStore, input_uri: str, field: str = "input"
) -> list[tuple[str, S3Uri]]:
    """(id, uri) of every image object at ``input_uri`` in key order: one object (its id is its
    name) or a prefix (ids are keys relative to it). Other objects are not images: skipped."""
    return [(image_id, info.uri) for image_id, info in list_image_objects(store, input_uri, field)]


def list_image_objects(
    store: ObjectStore, input_uri: str, field: str = "input"
) -> list[tuple[str, ObjectInfo]]:
    """:func:`list_images`, each image with its size and ETag as listed."""
    uri = S3Uri.parse(input_uri, field=field)
    if uri.key and not uri.key.endswith("/"):
        info = store.head(uri)
        if info is not None:
            if not is_image_key(uri.key):
                return []
            return [(uri.key.rsplit("/", 1)[-1], info)]
    prefix = uri.as_prefix()
    return [
        (o.uri.key[len(prefix.key) :], o)
        for o in store.list(prefix)
        if is_image_key(o.uri.key[len(prefix.key) :])
    ]


def write_listing(store: ObjectStore, input_uri: str, output_uri: str) -> tuple[ObjectInfo, int]:
    """Write the listing of the images at ``input_uri`` under ``output_uri`` (a new name per
    planning run, so two runs never share one); the listing object as written (its ETag the
    PUT's: its shards' reads of it are conditional on it) and its image count. Each line names
    its image's ETag as listed: the shard's GET of the image is conditional on it."""
    images = list_image_objects(store, input_uri)
    body = "".join(
        json.dumps(
            {
                LISTING_ID_FIELD: image_id,
                LISTING_IMAGE_FIELD: str(info.uri),
                LISTING_ETAG_FIELD: info.etag,
            }
        )
        + "\n"
        for image_id, info in images
    ).encode()
    listing = (
        S3Uri.parse(output_uri).as_prefix().join(f"{LISTING_DIR}images-{uuid.uuid4().hex}.jsonl")
    )
    etag = store.put_bytes(listing, body)
    return ObjectInfo(listing, len(body), etag), len(images)


@dataclass(frozen=True)
class ImageSource:
    """Where one record's image is: its bytes (inline data), or an object (``uri``)."""

    data: bytes | None = None
    uri: str | None = None


def image_source(value: Any, field: str) -> ImageSource:
    """The image a record's field names: Parquet/bytes as they are, an ``s3://`` URI
    (normalised: one spelling, so the scope check sees what is fetched), base64 text or a
    ``data:`` URL; ImageError saying what the field holds otherwise."""
    if isinstance(value, bytes | bytearray | memoryview):
        return ImageSource(data=bytes(value))
    if not isinstance(value, str):
        kind = "null" if value is None else type(value).__name__
        raise ImageError(
            f"field {field!r} is {kind}; expected an s3:// URI, base64 data or binary bytes"
        )
    if value.startswith("s3://"):
        try:
            return ImageSource(uri=normalise(value, field))
        except InvalidSpec as exc:
            raise ImageError(f"field {field!r}: {exc.message}") from None
    text = value
    if text.startswith("data:"):
        header, sep, text = text.partition(",")
        if not sep or ";base64" not in header:
            raise ImageError(f"field {field!r} is a data: URL that is not base64")
    try:
        return ImageSource(data=base64.b64decode(text, validate=True))
    except (binascii.Error, ValueError):
        raise ImageError(
            f"field {field!r} is neither an s3:// URI nor base64 data ({len(value)} characters)"
        ) from None


def fetch_image(store: ObjectStore, uri: str, max_bytes: int, etag: str = "") -> bytes:
    """The bytes of one image object, refusing one over ``max_bytes`` without reading it all;
    with ``etag`` (as planning listed it) the GET is conditional on it. A missing object, and
    one changed since it was listed, is an ImageError (that record's error, naming it and both
    ETags); the store's other errors (it is down) propagate."""
    target = S3Uri.parse(uri)
    try:
        with store.open(target, if_match=etag) as f:
            data = f.read(max_bytes + 1)
    except NotFound:
        raise ImageError(f"no image object at {uri}") from None
    except ObjectChanged as exc:
        raise ImageError(
            f"image object {uri} changed after the job was planned "
            f"({etags_then_now(exc.expected, exc.current)}); resubmit the job to read it"
        ) from None
    if len(data) > max_bytes:
        raise ImageError(
            f"image object {uri} is larger than {max_bytes} bytes (BARGE_MAX_IMAGE_BYTES)"
        )
    return data


def decode_image(data: bytes, mode: str, max_pixels: int) -> Any:
    """A PIL image in ``mode`` ("RGB", "L", ...): EXIF orientation applied, the first frame of
    an animation; ImageError for zero bytes, unknown or corrupt data and decompression bombs.
    ``open_image`` then ``load_image``."""
    return load_image(open_image(data, max_pixels), mode)


def open_image(data: bytes, max_pixels: int) -> Any:
    """``data`` as a PIL image whose header alone is read (its size is known, no pixel is
    decoded yet); ImageError for zero bytes, data Pillow cannot identify and an image over
    ``max_pixels`` (a decompression bomb)."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise ImageError("image is zero bytes")
    _map_pixel_blocks()
    # Pillow's own bomb check (an error at twice its limit) must not refuse what Barge allows:
    # Barge's check, below, refuses at the limit itself.
    Image.MAX_IMAGE_PIXELS = max_pixels
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError as exc:
            raise ImageError(_bomb(str(exc), max_pixels)) from None
        except UnidentifiedImageError:
            raise ImageError(
                f"not an image Pillow can read ({len(data)} bytes; JPEG, PNG, WebP, BMP, TIFF, "
                "GIF are)"
            ) from None
        except (OSError, ValueError, SyntaxError) as exc:
            raise ImageError(f"unreadable image header: {exc}") from None
    width, height = image.size
    if width * height > max_pixels:
        raise ImageError(
            f"image is {width}x{height} = {width * height:,} pixels, more than "
            f"BARGE_MAX_IMAGE_PIXELS ({max_pixels:,}): refused as a decompression bomb"
        )
    if width < 1 or height < 1:
        raise ImageError(f"image is {width}x{height} pixels")
    return image


def load_image(image: Any, mode: str) -> Any:
    """Decode an ``open_image``: its first frame, upright (EXIF orientation), in ``mode``.
    Decoding holds the pixels once (4 bytes a pixel for RGB, 1 for L); turning the image upright
    works in place, and only a mode conversion holds a second copy while it runs (at most 8
    bytes a pixel). ImageError for truncated or corrupt data."""
    from PIL import Image, ImageOps

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image.seek(0)  # the first frame of a GIF or multi-page TIFF
            image.load()
            ImageOps.exif_transpose(image, in_place=True)
            return image if image.mode == mode else image.convert(mode)
        except Image.DecompressionBombError as exc:
            raise ImageError(_bomb(str(exc), Image.MAX_IMAGE_PIXELS or 0)) from None
        except (OSError, ValueError, SyntaxError, EOFError) as exc:
            raise ImageError(f"truncated or corrupt image data: {exc}") from None


@functools.cache
def _map_pixel_blocks() -> None:
    """Pillow allocates a large image in blocks of 16 MiB, under glibc's largest dynamic mmap
    threshold (32 MiB): a freed block stays in the malloc arena of the thread that decoded it,
    so each decoding thread keeps an image's worth of memory after the image is gone. Blocks
    of 64 MiB are mapped with their image and unmapped when it goes. An operator's own
    PILLOW_BLOCK_SIZE is kept."""
    from PIL import Image

    if "PILLOW_BLOCK_SIZE" not in os.environ:  # what that variable sets, through the same call
        Image.core.set_block_size(PIXEL_BLOCK_BYTES)  # type: ignore[attr-defined]


def _bomb(detail: str, max_pixels: int) -> str:
    return (
        f"refused as a decompression bomb (over BARGE_MAX_IMAGE_PIXELS, {max_pixels:,}): {detail}"
    )


def image_bytes(
    store: ObjectStore, value: Any, field: str, *, may_read: Any, max_bytes: int, etag: str = ""
) -> bytes:
    """The encoded bytes of the image a record's field names (see ``image_source``); an
    ``s3://`` URI is fetched only when ``may_read(uri)`` (the tenant's read scopes), on
    condition of ``etag`` when given. ImageError says why not."""
    source = image_source(value, field)
    if source.uri is None:
        assert source.data is not None
        return source.data
    if may_read is None or not may_read(source.uri):
        raise ImageError(
            f"image {source.uri} is outside the storage this job's tenant may read; not fetched"
        )
    return fetch_image(store, source.uri, max_bytes, etag)


def read_image(
    store: ObjectStore,
    value: Any,
    field: str,
    *,
    may_read: Any,
    max_bytes: int,
    max_pixels: int,
    mode: str = "RGB",
) -> Any:
    """The decoded image a record's field names: ``image_bytes`` then ``decode_image``."""
    raw = image_bytes(store, value, field, may_read=may_read, max_bytes=max_bytes)
    return decode_image(raw, mode, max_pixels)
