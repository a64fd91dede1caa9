"""Local and cloud paths (`gs://`, `s3://`, ...) for run directories and prepared datasets.

A workdir or `data.root` of the form `scheme://...` goes through `etils.epath` (fsspec /
gfile backends), which orbax and tfds already use, instead of `pathlib`, which would turn
`gs://bucket/run` into a local folder `gs:/bucket/run`. Local paths stay `epath.Path` of the
absolute path (a `pathlib.Path` subclass behaviour: `/`, `read_text`, `mkdir`, ...).

Supported schemes are those of epath: gs, s3, az, hf (plus `file://`, mapped to the local
path). Their file systems need a backend package (gs: `gcsfs` or TensorFlow; s3: `s3fs`);
`check_usable` says so before any work starts.
"""

from __future__ import annotations

import os
import uuid

from etils import epath

from rankseg_jax.config.schema import ConfigError

SCHEMES = ("gs", "s3", "az", "hf")
_BACKEND_HINT = {"gs": "gcsfs (pip install gcsfs) or tensorflow", "s3": "s3fs (pip install "
                 "s3fs)", "az": "adlfs (pip install adlfs)", "hf": "huggingface_hub"}


def scheme(path: str | os.PathLike) -> str | None:
    """'gs' for 'gs://b/x', None for a local path (also for 'file://...')."""
    s = os.fspath(path)
    if "://" not in s:
        return None
    name = s.split("://", 1)[0]
    return None if name == "file" else name


def is_local(path: str | os.PathLike) -> bool:
    return scheme(path) is None


def as_path(path: str | os.PathLike, option: str = "path") -> epath.Path:
    """`path` as an epath.Path: absolute for a local path, the URI itself for a cloud one.

    Raises ConfigError naming `option` for a scheme epath cannot handle (instead of a local
    folder named after it).
    """
    s = os.fspath(path)
    name = scheme(s)
    if s.startswith("file://"):
        s = s[len("file://"):]
    if name is None:
        return epath.Path(os.path.abspath(s))
    if name not in SCHEMES:
        raise ConfigError(f"{option}={s!r}: the {name}:// scheme is not supported (local "
                          f"paths and {', '.join(f'{n}://' for n in SCHEMES)} are)")
    return epath.Path(s)


def check_usable(path: str | os.PathLike, option: str) -> epath.Path:
    """Returns `as_path(path)` after checking that its file system can be reached.

    A cloud path is probed with `exists()`; a missing backend package or unreachable store
    raises ConfigError naming `option`, what to install and the underlying error.
    """
    p = as_path(path, option)
    if is_local(path):
        return p
    try:
        p.exists()
    except Exception as e:  # ImportError, ValueError('Protocol not known'), auth errors
        name = scheme(path)
        raise ConfigError(
            f"{option}={os.fspath(path)!r}: the {name}:// file system is not usable here "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); install "
            f"{_BACKEND_HINT.get(name, 'its fsspec backend')} and check the credentials") from e
    return p


def write_text_atomic(path: epath.Path, text: str) -> None:
    """Writes `text` to `path` so that readers see the old or the new content, never half.

    Local: a temporary file beside it, then rename. Cloud object stores publish an object
    only when its upload completes, so a direct write is already atomic there.
    """
    if is_local(path):
        tmp = path.with_name(f"{path.name}.tmp-{uuid.uuid4().hex[:8]}")
        tmp.write_text(text)
        os.replace(tmp, path)
    else:
        path.write_text(text)
