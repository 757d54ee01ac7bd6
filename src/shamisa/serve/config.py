"""The server's limits and switches (one frozen object, built from the ``shamisa serve`` options)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from shamisa.errors import ConfigError

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")


@dataclass(frozen=True)
class ServeConfig:
    """Limits of the server.

    Attributes:
        max_upload_mb: largest request body in MB (all files of one request together); larger -> 413.
        max_files: most files (or paths) in one request.
        max_pixels: images with more pixels are refused before decoding (422). None: the scorer's own
            guard (64 MP for non-JPEG, 179 MP for JPEG, which is decoded reduced).
        queue: most scoring / map requests admitted at once (waiting or running); more -> 503 with
            Retry-After, so a burst never holds more than ``queue x max_upload_mb`` of uploads.
        batch_size: most images per encoder pass; requests waiting together are batched up to it.
            None: the model's default (1 on the CPU, 16 on CUDA).
        workers: decoding threads (uploads are decoded beside the model thread).
        allow_paths: a folder; enables ``POST /api/score-paths`` for files under it only.
        allowed_hosts: Host header values accepted (DNS-rebinding guard); None accepts any, the
            default for a server bound to a non-loopback address.
        map_max_side: longest side of the heat map PNG sent to the page.
    """

    max_upload_mb: float = 50.0
    max_files: int = 64
    max_pixels: int | None = None
    queue: int = 32
    batch_size: int | None = None
    workers: int = 2
    allow_paths: Path | None = None
    allowed_hosts: tuple[str, ...] | None = LOOPBACK_HOSTS
    map_max_side: int = 1024
    extra: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.max_upload_mb > 0:
            raise ConfigError(f"--max-upload-mb must be > 0, got {self.max_upload_mb}")
        if self.max_files < 1:
            raise ConfigError(f"max_files must be >= 1, got {self.max_files}")
        if self.max_pixels is not None and self.max_pixels < 64:
            raise ConfigError(f"--max-pixels must be >= 64, got {self.max_pixels}")
        if self.queue < 1:
            raise ConfigError(f"--queue must be >= 1, got {self.queue}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ConfigError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.workers < 1:
            raise ConfigError(f"--workers must be >= 1, got {self.workers}")
        if self.allow_paths is not None:
            root = Path(self.allow_paths)
            if not root.is_dir():
                raise ConfigError(f"--allow-paths {root}: not a folder")
            object.__setattr__(self, "allow_paths", root.resolve(strict=True))

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)
