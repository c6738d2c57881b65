"""Agent configuration: flags override environment variables override defaults."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from shoal.protocol import RESERVED_LABELS, NatsOptions, Subjects, validate_host_id
from shoal.protocol.connection import DEFAULT_NATS_URL, split_servers
from shoal.protocol.errors import ShoalError
from shoal.protocol.selectors import is_label_key, is_label_value
from shoal.protocol.subjects import DEFAULT_PREFIX


class InvalidSetting(ShoalError, ValueError):
    """An agent setting is invalid; a ValueError so pydantic reports it as a field error."""


def parse_labels(value: Any) -> dict[str, str]:
    """Parse ``k=v,k2=v2`` (or a list of ``k=v``) into a dict, rejecting bad keys."""
    if value is None or value == "":
        return {}
    if isinstance(value, dict):
        items = list(value.items())
    else:
        parts = value.split(",") if isinstance(value, str) else list(value)
        items = []
        for part in (p.strip() for p in parts):
            if not part:
                continue
            key, sep, val = part.partition("=")
            if not sep:
                raise InvalidSetting(f"label {part!r} is not of the form key=value")
            items.append((key.strip(), val.strip()))
    labels: dict[str, str] = {}
    for key, val in items:
        if not is_label_key(key):
            raise InvalidSetting(f"invalid label key {key!r}")
        if not is_label_value(val):
            raise InvalidSetting(f"invalid value {val!r} for label {key!r}")
        if key in RESERVED_LABELS:
            raise InvalidSetting(
                f"label {key!r} is reserved: it is a fact the agent reports itself"
            )
        labels[key] = val
    return labels


class AgentSettings(BaseSettings):
    """Settings of ``shoal-agent``. Environment names are listed per field."""

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True, env_prefix="SHOAL_")

    servers: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(DEFAULT_NATS_URL,), validation_alias=AliasChoices("NATS_URL")
    )
    creds: Path | None = Field(default=None, validation_alias=AliasChoices("NATS_CREDS"))
    nkey: Path | None = Field(default=None, validation_alias=AliasChoices("NATS_NKEY"))
    user: str | None = Field(default=None, validation_alias=AliasChoices("NATS_USER"))
    password: str | None = Field(default=None, validation_alias=AliasChoices("NATS_PASSWORD"))
    token: str | None = Field(default=None, validation_alias=AliasChoices("NATS_TOKEN"))
    tlsca: Path | None = Field(default=None, validation_alias=AliasChoices("NATS_CA"))
    tlscert: Path | None = Field(default=None, validation_alias=AliasChoices("NATS_CERT"))
    tlskey: Path | None = Field(default=None, validation_alias=AliasChoices("NATS_KEY"))

    host_id: str | None = Field(default=None, validation_alias=AliasChoices("SHOAL_HOST_ID"))
    labels: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=dict, validation_alias=AliasChoices("SHOAL_LABELS")
    )
    docker_host: str | None = Field(default=None, validation_alias=AliasChoices("DOCKER_HOST"))
    prefix: str = Field(default=DEFAULT_PREFIX, validation_alias=AliasChoices("SHOAL_PREFIX"))
    heartbeat_interval: float = Field(
        default=5.0,
        gt=0,
        le=3600,
        validation_alias=AliasChoices("SHOAL_HEARTBEAT_INTERVAL"),
    )
    concurrency: int = Field(
        default=8, ge=1, le=256, validation_alias=AliasChoices("SHOAL_CONCURRENCY")
    )
    queue_limit: int = Field(default=256, ge=0, validation_alias=AliasChoices("SHOAL_QUEUE_LIMIT"))
    docker_timeout: float = Field(
        default=30.0,
        gt=0,
        validation_alias=AliasChoices("SHOAL_DOCKER_TIMEOUT"),
    )
    shutdown_grace: float = Field(
        default=20.0,
        ge=0,
        validation_alias=AliasChoices("SHOAL_SHUTDOWN_GRACE"),
    )
    max_clock_skew: float = Field(
        default=60.0,
        ge=0,
        validation_alias=AliasChoices("SHOAL_MAX_CLOCK_SKEW"),
    )

    prune_keep_images: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(),
        validation_alias=AliasChoices("SHOAL_PRUNE_KEEP_IMAGES"),
        description="Image reference globs prune never removes.",
    )
    prune_keep_containers: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(),
        validation_alias=AliasChoices("SHOAL_PRUNE_KEEP_CONTAINERS"),
        description="Container name globs prune never removes.",
    )
    long_timeout: float = Field(
        default=600.0,
        gt=0,
        validation_alias=AliasChoices("SHOAL_LONG_TIMEOUT"),
        description="Seconds allowed for long engine calls (disk usage, pull, build-cache prune).",
    )

    trust: Path | None = Field(
        default=None,
        validation_alias=AliasChoices("SHOAL_TRUST"),
        description="Trust file: the keys allowed to send requests, with their roles.",
    )
    insecure: bool = Field(
        default=False,
        validation_alias=AliasChoices("SHOAL_INSECURE"),
        description="Accept unsigned requests from anyone (no trust file).",
    )
    state_dir: Path | None = Field(
        default=None,
        validation_alias=AliasChoices("SHOAL_STATE_DIR"),
        description="Where the agent keeps its request journal.",
    )
    policy: Path | None = Field(
        default=None,
        validation_alias=AliasChoices("SHOAL_POLICY"),
        description="Policy file: what this host allows deploys to do.",
    )

    health_file: Path | None = Field(
        default=None,
        validation_alias=AliasChoices("SHOAL_HEALTH_FILE"),
        description="Health file for --check-health (default: in the state directory).",
    )

    event_loop: Literal["auto", "uvloop", "asyncio"] = Field(
        default="auto",
        validation_alias=AliasChoices("SHOAL_EVENT_LOOP"),
        description="Event loop: uvloop when installed (auto), uvloop, or asyncio's own.",
    )

    metrics_port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        validation_alias=AliasChoices("SHOAL_METRICS_PORT"),
        description="Serve Prometheus metrics on this port (0: any free port); off if unset.",
    )
    metrics_address: str = Field(
        default="127.0.0.1",
        min_length=1,
        max_length=255,
        validation_alias=AliasChoices("SHOAL_METRICS_ADDRESS"),
        description="Address the metrics server listens on (0.0.0.0 exposes it to the network).",
    )

    files_dir: Path | None = Field(
        default=None,
        validation_alias=AliasChoices("SHOAL_FILES_DIR"),
        description="Where secret and config files are kept (default: STATE_DIR/HOST/files);"
        " an agent in a container needs it bind-mounted at the same path on the host.",
    )

    def resolved_state_dir(self, host_id: str) -> Path:
        """The state directory for this host id (default under the user's state dir)."""
        if self.state_dir is not None:
            return self.state_dir / host_id
        if os.geteuid() == 0:
            return Path("/var/lib/shoal/agent") / host_id
        base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
        return Path(base) / "shoal" / "agent" / host_id

    @field_validator("prune_keep_images", "prune_keep_containers", mode="before")
    @classmethod
    def _split_globs(cls, value: Any) -> tuple[str, ...]:
        if value is None:
            return ()
        items = value.split(",") if isinstance(value, str) else list(value)
        return tuple(item.strip() for item in items if item.strip())

    @field_validator("event_loop", mode="before")
    @classmethod
    def _lower_event_loop(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("servers", mode="before")
    @classmethod
    def _split_servers(cls, value: Any) -> tuple[str, ...]:
        return split_servers(value)

    @field_validator("labels", mode="before")
    @classmethod
    def _parse_labels(cls, value: Any) -> dict[str, str]:
        return parse_labels(value)

    @field_validator("host_id")
    @classmethod
    def _check_host_id(cls, value: str | None) -> str | None:
        return None if value is None else validate_host_id(value)

    @field_validator("prefix")
    @classmethod
    def _check_prefix(cls, value: str) -> str:
        Subjects(value)
        return value

    @model_validator(mode="after")
    def _check_nats(self) -> AgentSettings:
        self.nats_options(self.host_id or "agent")
        if self.insecure and self.trust is not None:
            raise InvalidSetting("--insecure and --trust contradict each other: give one")
        return self

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> AgentSettings:
        """Settings from command-line values; ``None`` means "not given" (env/default)."""
        given: dict[str, Any] = {k: v for k, v in options.items() if v is not None}
        return cls(**given)

    def nats_options(self, host_id: str) -> NatsOptions:
        return NatsOptions(
            servers=self.servers,
            creds=self.creds,
            nkey=self.nkey,
            user=self.user,
            password=self.password,
            token=self.token,
            tlsca=self.tlsca,
            tlscert=self.tlscert,
            tlskey=self.tlskey,
            name=f"shoal-agent:{host_id}",
        )
