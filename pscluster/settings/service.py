"""What every service has: where it listens, how it finds the cluster, its token."""

from __future__ import annotations

from pathlib import Path
from typing import Self

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "PSC_"


class ServiceSettings(BaseSettings):
    """What every service has: where it listens and how it finds the cluster."""

    # An empty variable means "unset": compose passes ``${PSC_X:-}`` through as "".
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="forbid", frozen=True, env_ignore_empty=True
    )

    host: str = Field("127.0.0.1", description="Address to listen on.")
    port: int = Field(0, ge=0, le=65535, description="Port to listen on; 0 picks a free one.")
    ready_file: Path | None = Field(
        None, description="Once listening, write the service's URL to this file (for launchers)."
    )
    advertise_url: str | None = Field(
        None, description="URL others use to reach this service; default http://HOST:PORT."
    )
    log_level: str = Field("INFO", description="Python logging level.")
    token: SecretStr | None = Field(
        None, description="Cluster token: required as 'Authorization: Bearer' on every call."
    )
    token_file: Path | None = Field(
        None, description="Read the cluster token from this file (a compose secret)."
    )
    insecure: bool = Field(
        False, description="Run without a cluster token: anyone who reaches the port can train."
    )
    fault_kill_at: int | None = Field(
        None, description="Fault injection (tests): SIGKILL this process once at this step."
    )
    fault_marker: Path | None = Field(
        None, description="Fault injection: file recording that the fault fired (fires once)."
    )

    @model_validator(mode="after")
    def _check_token(self) -> Self:
        if self.token_file is not None and self.token is None:
            if not self.token_file.is_file():
                raise ValueError(f"PSC_TOKEN_FILE: {self.token_file} is not a readable file")
            if not self.token_file.read_text().strip():
                raise ValueError(f"PSC_TOKEN_FILE: {self.token_file} is empty")
        if self.token is None and self.token_file is None and not self.insecure:
            raise ValueError(
                "PSC_TOKEN: a cluster token is required (PSC_TOKEN or PSC_TOKEN_FILE); set "
                "PSC_INSECURE=true to run without one on a trusted network"
            )
        return self

    def cluster_token(self) -> str | None:
        """The token every call must carry; None when running insecure."""
        if self.token is not None:
            return self.token.get_secret_value()
        if self.token_file is not None:
            return self.token_file.read_text().strip()
        return None
