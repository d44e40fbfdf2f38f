"""The service's settings: ``$FACEFLOW_HOME/serve.toml``, then ``FACEFLOW_SERVE_*`` variables, then flags.

Later sources win (pydantic-settings: flags are the constructor's keywords, the environment comes
next, the TOML file last). :meth:`ServeSettings.redacted` is what ``faceflow serve --print-config``
shows: secrets (the TLS key's password) are replaced, and API keys never live here at all (they are
in the key store, hashed).
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from faceflow.models.store import faceflow_home

ENV_PREFIX = "FACEFLOW_SERVE_"
CONFIG_NAME = "serve.toml"
SECRET_FIELDS = frozenset({"ssl_keyfile_password"})


def config_path() -> Path:
    """Where the settings file is read from: ``$FACEFLOW_HOME/serve.toml``."""
    return faceflow_home() / CONFIG_NAME


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class ServeSettings(BaseSettings):
    """Everything ``faceflow serve`` can be told; each field is also ``FACEFLOW_SERVE_<NAME>`` and a key of
    ``serve.toml``."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", validate_default=True)

    host: str = Field(default="127.0.0.1", description="Address to bind; anything but loopback needs allow_remote.")
    port: int = Field(default=8000, ge=0, le=65535, description="TCP port (0: any free port).")
    allow_remote: bool = Field(default=False, description="Allow binding to a non-loopback address.")
    workers: int = Field(default=1, ge=1, le=64, description="Server processes (each with its own models).")
    gallery_url: str | None = Field(default=None, description="Gallery store (SQLite path or postgresql:// URL); "
                                                      "default $FACEFLOW_GALLERY or $FACEFLOW_HOME/galleries.db.")
    keys_path: Path | None = Field(default=None, description="API key store (SQLite); default $FACEFLOW_HOME/keys.db.")
    stages: str = Field(default="detect,landmarks,pose,attributes", description="Stages of /v1/analyze by default.")
    detector: str = Field(default="yunet", description="Detector of /v1/analyze by default.")
    verify_model: str = Field(default="sface", description="Recognition model of /v1/verify and /v1/embed by default.")
    gallery_model: str = Field(default="fused", description="Recognition model of galleries created through the API.")
    max_upload_bytes: int = Field(default=20 * 1024 * 1024, ge=1024, description="Largest request body (413 above).")
    max_pixels: int = Field(default=40_000_000, ge=1, description="Largest image, width x height (422 above).")
    request_timeout: float = Field(default=30.0, gt=0, description="Seconds a request may take (504 after).")
    threads: int = Field(default=2, ge=1, le=256, description="Images analysed at once per process (the work pool).")
    queue_size: int = Field(default=16, ge=0, description="Requests waiting for the pool beyond those running "
                                                  "(503 with Retry-After when full).")
    rate_limit: float = Field(default=20.0, gt=0, description="Requests per second per API key, sustained.")
    rate_burst: int = Field(default=40, ge=1, description="Requests per API key allowed in a burst (429 after).")
    auth_failure_rate: float = Field(default=2.0, gt=0, description="Failed API-key checks per second allowed "
                                                                    "from one address (each costs a scrypt).")
    auth_failure_burst: int = Field(default=30, ge=1, description="Failed API-key checks from one address at once "
                                                                  "(then 429 until the rate allows more).")
    cors_origins: list[str] = Field(default_factory=list, description="Origins allowed by CORS (none: CORS off).")
    ssl_certfile: str | None = Field(default=None, description="TLS certificate (PEM), passed to uvicorn.")
    ssl_keyfile: str | None = Field(default=None, description="TLS private key (PEM), passed to uvicorn.")
    ssl_keyfile_password: str | None = Field(default=None, description="Password of the TLS key.")
    ssl_ca_certs: str | None = Field(default=None, description="CA bundle to verify client certificates.")
    ssl_cert_reqs: int | None = Field(default=None, ge=0, le=2, description="Client certificates: 0 none, 1 optional, "
                                                                           "2 required (uvicorn's --ssl-cert-reqs).")
    ssl_ciphers: str | None = Field(default=None, description="TLS ciphers (uvicorn's --ssl-ciphers).")
    log_level: str = Field(default="info", description="uvicorn log level.")
    load_models: bool = Field(default=True, description="Load the default models at start (/readyz waits for them).")

    @field_validator("stages")
    @classmethod
    def _stages_list(cls, value: str) -> str:
        from faceflow.stage import registry

        names = [s.strip() for s in value.split(",") if s.strip()]
        if not names:
            raise ValueError("at least one stage")
        known = registry().names()
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ValueError(f"unknown stage {unknown[0]!r}; known: {', '.join(known)}")
        return ",".join(names)

    @field_validator("detector")
    @classmethod
    def _detector_name(cls, value: str) -> str:
        from faceflow.detect.base import DETECTORS

        if value not in DETECTORS:
            raise ValueError(f"unknown detector {value!r}; choose one of: {', '.join(DETECTORS)}")
        return value

    @field_validator("ssl_certfile", "ssl_keyfile", "ssl_ca_certs")
    @classmethod
    def _readable_file(cls, value: str | None) -> str | None:
        """Refused here, by name, rather than by a traceback from inside uvicorn's start."""
        if value is not None and not Path(value).is_file():
            raise ValueError(f"{value} is not a file")
        return value

    @field_validator("verify_model", "gallery_model")
    @classmethod
    def _recognition_model(cls, value: str) -> str:
        from faceflow.recognize import CALIBRATION

        if value not in CALIBRATION:
            raise ValueError(f"unknown recognition model {value!r}; choose one of: {', '.join(CALIBRATION)}")
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Flags (keywords), then the environment, then ``$FACEFLOW_HOME/serve.toml``: first wins."""
        return init_settings, env_settings, TomlConfigSettingsSource(settings_cls, toml_file=config_path())

    @property
    def loopback(self) -> bool:
        return is_loopback(self.host)

    @property
    def tls(self) -> bool:
        return bool(self.ssl_certfile and self.ssl_keyfile)

    def resolved_keys_path(self) -> Path:
        return self.keys_path or faceflow_home() / "keys.db"

    def resolved_gallery_url(self) -> str:
        from faceflow.gallery.backends import default_gallery_url

        return self.gallery_url or default_gallery_url()

    def redacted(self) -> dict[str, Any]:
        """The settings as JSON-ready values, secrets replaced by ``"***"`` (``--print-config``)."""
        from faceflow.gallery.store import redact_url

        out = self.model_dump(mode="json")
        for name in SECRET_FIELDS:
            if out.get(name):
                out[name] = "***"
        out["keys_path"] = str(self.resolved_keys_path())
        out["gallery_url"] = redact_url(self.resolved_gallery_url())
        out["config_file"] = str(config_path())
        return out

    def to_environment(self) -> dict[str, str]:
        """These settings as ``FACEFLOW_SERVE_*`` variables (for worker processes, which re-read them)."""
        out: dict[str, str] = {}
        for name, value in self.model_dump(mode="json").items():
            if value is None:
                continue
            key = ENV_PREFIX + name.upper()
            if isinstance(value, list | dict):
                import json

                out[key] = json.dumps(value)
            else:
                out[key] = str(value).lower() if isinstance(value, bool) else str(value)
        return out
