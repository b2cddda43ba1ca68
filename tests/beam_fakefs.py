"""A remote-like Beam filesystem for tests: `fake://PATH` is `$FINGERSPELL_FAKEFS_ROOT/PATH` on local disk.

Only Beam's FileSystems reach it (`os` and `pathlib` calls on a fake:// path fail, as on
gs://), so a test through it exercises the Beam engine's remote-path code offline. Like
GCS, opening a missing file raises an exception that is not an OSError. Beam 2.77
has no in-memory filesystem any more; defining this subclass registers the scheme.
"""
from __future__ import annotations

import os
import posixpath

from apache_beam.io.filesystem import BeamIOError, FileMetadata, MatchResult
from apache_beam.io.localfilesystem import LocalFileSystem
from apache_beam.runners.runner import PipelineRunner

SCHEME = "fake://"
ROOT_ENV = "FINGERSPELL_FAKEFS_ROOT"


def _local(path: str) -> str:
    """fake://x -> ROOT/x; local paths (which the base class passes to itself) unchanged."""
    return os.path.join(os.environ[ROOT_ENV], path[len(SCHEME):]) if path.startswith(SCHEME) else path


def _remote(path: str) -> str:
    return SCHEME + os.path.relpath(path, os.environ[ROOT_ENV])


class NotFound(Exception):
    """Like google.cloud.exceptions.NotFound, what GCS raises for a missing object: not an OSError."""


class FakeRemoteFileSystem(LocalFileSystem):
    @classmethod
    def scheme(cls) -> str:
        return "fake"

    def join(self, basepath, *paths):
        return posixpath.join(basepath, *paths)

    def split(self, path):
        return posixpath.split(path)

    def mkdirs(self, path):
        super().mkdirs(_local(path))

    def has_dirs(self):
        return False

    def match(self, patterns, limits=None):
        found = super().match([_local(p) for p in patterns], limits)
        return [MatchResult(p, [FileMetadata(_remote(m.path), m.size_in_bytes, m.last_updated_in_seconds)
                                for m in r.metadata_list]) for p, r in zip(patterns, found)]

    def create(self, path, *args, **kwargs):
        return super().create(_local(path), *args, **kwargs)

    def open(self, path, *args, **kwargs):
        if not os.path.exists(_local(path)):  # as GCS does: its client's NotFound, which is no OSError
            raise NotFound(f"404 GET {path}: No such object")
        return super().open(_local(path), *args, **kwargs)

    def copy(self, source_file_names, destination_file_names):
        super().copy([_local(p) for p in source_file_names], [_local(p) for p in destination_file_names])

    def rename(self, source_file_names, destination_file_names):
        super().rename([_local(p) for p in source_file_names], [_local(p) for p in destination_file_names])

    def exists(self, path):
        return super().exists(_local(path))

    def size(self, path):
        return super().size(_local(path))

    def last_updated(self, path):
        return super().last_updated(_local(path))

    def checksum(self, path):
        return super().checksum(_local(path))

    def metadata(self, path):
        found = super().metadata(_local(path))
        return FileMetadata(path, found.size_in_bytes, found.last_updated_in_seconds)

    def delete(self, paths):  # the base class matches first, which would hand back fake:// names
        missing = {p: FileNotFoundError(p) for p in paths if not os.path.exists(_local(p))}
        if missing:
            raise BeamIOError("Delete operation failed", missing)
        for path in paths:
            os.remove(_local(path))


class PretendRemoteRunner(PipelineRunner):
    """`--runner=tests.beam_fakefs.PretendRemoteRunner`: a runner the Beam engine cannot tell from a remote one
    (not a local runner: worker wheel staged, remote paths required, no local worker count), that runs the
    pipeline in this process with FnApiRunner."""

    def run_pipeline(self, pipeline, options):
        from apache_beam.runners.portability.fn_api_runner import FnApiRunner

        return FnApiRunner().run_pipeline(pipeline, options)
