"""Object store: one interface (`ObjectStore`), two backends (local folder, S3 via `minio`).

`open_store(settings)` picks the backend from `MMDLM_STORE_BACKEND`.
"""

from __future__ import annotations

from services.common.settings import Settings
from services.common.store.base import (
    InvalidKeyError,
    ObjectInfo,
    ObjectNotFoundError,
    ObjectStore,
    StoreError,
    StoreUnavailableError,
    validate_key,
    validate_prefix,
)


def open_store(settings: Settings) -> ObjectStore:
    if settings.store_backend == "s3":
        from services.common.store.s3 import S3Store

        return S3Store.from_settings(settings)
    from services.common.store.local import LocalStore

    assert settings.store_path is not None
    return LocalStore(settings.store_path)


__all__ = [
    "InvalidKeyError",
    "ObjectInfo",
    "ObjectNotFoundError",
    "ObjectStore",
    "StoreError",
    "StoreUnavailableError",
    "open_store",
    "validate_key",
    "validate_prefix",
]
